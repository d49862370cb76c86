//! The controller: the single source of truth for topics, partitions, which byte ranges of
//! which objects hold which offsets, and consumer groups ([`groups`]).
//!
//! Offsets are assigned here, at commit, in one store transaction per object ([`log`]), so a
//! partition has one total order however many agents write to it. The hot view (topics, high
//! watermarks, the most recent extents of each partition) lives in memory; every change is
//! written to the [`store`] first. Agents reach the controller only through the calls of
//! [`crate::api::calls`], answered by [`calls::dispatch`] (in-process, or behind the gRPC
//! [`service`]).
//!
//! Everything in this folder runs in the controller process (or the agent's, embedded).
//!
//! Must not touch: Kafka wire types, object bytes (it records byte ranges, never reads them).

pub mod acls;
pub mod calls;
pub mod client_metrics;
pub mod configs;
pub mod groups;
pub mod log;
pub mod partitions;
pub mod producers;
pub mod quotas;
pub mod retention;
pub mod service;
pub mod store;
pub mod txn;
pub mod users;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use uuid::Uuid;

use crate::api::txn::{ProducerDescription, TxnEnd, TxnStatus};
use crate::api::{
    CommitRequest, CommitResult, ControllerError, CreatePartitions, CreateTopic, ExtentRecord, PARTITIONS_MAX, PartitionOffsets, TopicMeta,
    TopicRef, validate_topic_name,
};
use crate::clock::{Clock, Entropy};
use crate::config::TopicsConfig;
use groups::{GroupCoordinator, GroupSettings, TopicLookup};
use log::CommitView;
use producers::{ProducerKey, ProducerState};
use store::{AbortedTxnRecord, GroupOffsetRecord, MetadataStore, ObjectRecord, OpenTxnRecord, StoreError, TopicRecord, TxnEffects};
use txn::Transaction;

/// Extents of each partition kept in memory, so tail reads never query the store.
const RECENT_EXTENTS_MAX: usize = 64;
/// Aborted transactions returned per partition and fetch.
const ABORTED_TXNS_PER_FETCH_MAX: u32 = 10_000;
/// Extents fetched from the store per lookup.
const STORE_LOOKUP_EXTENTS_MAX: u32 = 32;
impl From<StoreError> for ControllerError {
    fn from(e: StoreError) -> Self {
        ControllerError::Unavailable(e.unavailable_text())
    }
}

/// The controller's view with the offsets and producer states that the earlier requests of a
/// group commit will leave (planned, not yet written).
struct Overlaid<'a, V: log::CommitView> {
    base: &'a V,
    offsets: &'a HashMap<(Uuid, i32), PartitionOffsets>,
    producers: &'a HashMap<ProducerKey, ProducerState>,
}

impl<V: log::CommitView> log::CommitView for Overlaid<'_, V> {
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Option<PartitionOffsets> {
        self.offsets.get(&(topic_id, partition)).copied().or_else(|| self.base.offsets(topic_id, partition))
    }
    fn producer(&self, key: &ProducerKey) -> Option<ProducerState> {
        self.producers.get(key).cloned().or_else(|| self.base.producer(key))
    }
    fn check_txn(&self, batch: &crate::format::object::ProducerBatch, topic_id: Uuid, partition: i32) -> Result<(), ControllerError> {
        self.base.check_txn(batch, topic_id, partition)
    }
    fn txn_open(&self, topic_id: Uuid, partition: i32, producer_id: i64) -> bool {
        self.base.txn_open(topic_id, partition, producer_id)
    }
}

/// Commits per store transaction in [`Controller::commit_objects`] (group commit).
pub const GROUP_COMMIT_OBJECTS_MAX: usize = 256;

#[derive(Debug, Default)]
struct PartitionState {
    offsets: Option<PartitionOffsets>,
    recent: VecDeque<ExtentRecord>,
    /// Open transactions: producer id -> first offset (the earliest bounds the LSO).
    open_txns: BTreeMap<i64, i64>,
}

#[derive(Debug, Default)]
struct State {
    by_name: HashMap<String, Arc<TopicMeta>>,
    by_id: HashMap<Uuid, Arc<TopicMeta>>,
    partitions: HashMap<(Uuid, i32), PartitionState>,
    producers: HashMap<ProducerKey, ProducerState>,
    commits_since_expiry: u64,
    transactions: HashMap<String, Transaction>,
    /// Producer id -> transactional id, for the check of transactional batches at commit.
    txn_of: HashMap<i64, String>,
}

impl State {
    /// Keeps the producer states seen at or after `before_ms`, and those of a producer with a
    /// transaction open in the partition (the store's [`MetadataStore::expire_producers`]).
    fn retain_producers(&mut self, before_ms: i64) {
        let partitions = &self.partitions;
        self.producers.retain(|(pid, topic, partition), p| {
            p.last_seen_ms >= before_ms || partitions.get(&(*topic, *partition)).is_some_and(|s| s.open_txns.contains_key(pid))
        });
    }

    /// Whether [`State::retain_producers`] would drop anything.
    fn producers_expire(&self, before_ms: i64) -> bool {
        self.producers.iter().any(|((pid, topic, partition), p)| {
            p.last_seen_ms < before_ms && self.partitions.get(&(*topic, *partition)).is_none_or(|s| !s.open_txns.contains_key(pid))
        })
    }

    /// A committed extent, into memory: the partition's next offset and its recent extents.
    fn apply_extent(&mut self, r: ExtentRecord) {
        if let Some(p) = self.partitions.get_mut(&(r.topic_id, r.partition)) {
            if let Some(o) = p.offsets.as_mut() {
                // Invariant 1, checked where offsets are handed out: dense per partition.
                assert_eq!(o.next_offset, r.base_offset, "offsets of {}-{} not dense", r.topic_id, r.partition);
                assert!(r.end_offset > r.base_offset, "an empty extent at {}-{}", r.topic_id, r.partition);
                o.next_offset = r.end_offset;
            }
            if p.recent.len() == RECENT_EXTENTS_MAX {
                p.recent.pop_front();
            }
            p.recent.push_back(r);
        }
    }
}

impl CommitView for State {
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Option<PartitionOffsets> {
        self.partitions.get(&(topic_id, partition)).and_then(|p| p.offsets)
    }
    fn producer(&self, key: &ProducerKey) -> Option<ProducerState> {
        self.producers.get(key).cloned()
    }
    fn check_txn(&self, b: &crate::format::object::ProducerBatch, topic_id: Uuid, partition: i32) -> Result<(), ControllerError> {
        Controller::check_txn_batch(&self.txn_of, &self.transactions, b.producer_id, b.epoch, topic_id, partition)
    }
    fn txn_open(&self, topic_id: Uuid, partition: i32, producer_id: i64) -> bool {
        self.partitions.get(&(topic_id, partition)).is_some_and(|p| p.open_txns.contains_key(&producer_id))
    }
}

/// Producer states are swept for expiry after this many commits.
const PRODUCER_EXPIRY_SWEEP_COMMITS: u64 = 1000;

/// The controller service. Methods that write go through the store and block; call them from
/// a blocking context (the in-process client does).
pub struct Controller {
    store: Arc<dyn MetadataStore>,
    /// Shared with the group coordinator's topic view.
    state: Arc<RwLock<State>>,
    groups: Arc<GroupCoordinator>,
    /// Serializes writers (commits, topic changes): one plan, one transaction at a time.
    write_lock: Mutex<()>,
    commits: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    defaults: TopicsConfig,
    cluster_id: String,
    /// Kafka's producer.id.expiration.ms: idle idempotent producers are forgotten after this.
    producer_expiry_ms: i64,
    /// Kafka's transactional.id.expiration.ms: transactional ids with no transaction in
    /// progress, unused for this long, are forgotten ([`txn::DEFAULT_TRANSACTIONAL_ID_EXPIRATION_MS`]
    /// unless set with [`Controller::with_transactional_id_expiration_ms`]).
    txn_id_expiry_ms: i64,
    /// Set when the store refused a write because this view is stale or this controller lost
    /// its lease: the owner must stop using this instance (and reopen one if still active).
    stale: std::sync::atomic::AtomicBool,
    /// Changes with every compaction swap ([`Controller::replace_extents`]); starts at a random
    /// value, so two instances (a failover) almost never show the same one. Agents that cache
    /// extents and may have missed a swap drop their cache when it differs from what they saw.
    extents_replaced: std::sync::atomic::AtomicU64,
    /// Which agent runs which background job ([`retention::JobLeases`]).
    leases: Mutex<retention::JobLeases>,
    /// Client quotas ([`quotas`]), a versioned set agents load whole.
    quotas: quotas::Quotas,
    /// Client metrics subscriptions ([`client_metrics`]), a set agents load whole.
    client_metrics: client_metrics::ClientMetrics,
    /// The last storage figures ([`Controller::storage_stats`]).
    storage: Mutex<Option<crate::api::jobs::StorageStats>>,
    /// `[controller] object_commit_window_ms`: keys older than this are never committed, and
    /// orphan marks are kept this long.
    commit_window_ms: i64,
    /// Every ACL, replaced whole on each change ([`acls`]); its version starts at a random value.
    acls: RwLock<Arc<crate::api::acl::AclSet>>,
    /// Serializes ACL changes (store, then memory), apart from the commits' `write_lock`.
    acl_write: Mutex<()>,
}

/// A controller on the SQLite file at `path` (created if new), a manual clock at 0 and seeded
/// entropy: the controller modules' tests.
#[cfg(test)]
pub(crate) fn open_for_test(path: &std::path::Path) -> Controller {
    let store = Arc::new(store::sqlite::SqliteStore::open(path).unwrap());
    Controller::open(
        store,
        Default::default(),
        1000,
        Arc::new(crate::clock::ManualClock::new(0)),
        Arc::new(crate::clock::SeededEntropy::new(1)),
    )
    .unwrap()
}

/// Checks a topic's configs against Kafka's (names, types, bounds; INVALID_CONFIG with Kafka's
/// message).
fn validate_configs(configs: &BTreeMap<String, String>) -> Result<(), ControllerError> {
    for (k, v) in configs {
        crate::api::configs::check_topic_config(k, v)?;
    }
    Ok(())
}

impl Controller {
    /// Opens the controller on `store`, loading its snapshot, with default group settings.
    pub fn open(
        store: Arc<dyn MetadataStore>,
        defaults: TopicsConfig,
        producer_expiry_ms: i64,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Result<Self, ControllerError> {
        Self::open_with_groups(store, defaults, producer_expiry_ms, GroupSettings::default(), clock, entropy)
    }

    /// Opens the controller on `store`, loading its snapshot and committed group offsets.
    pub fn open_with_groups(
        store: Arc<dyn MetadataStore>,
        defaults: TopicsConfig,
        producer_expiry_ms: i64,
        group_settings: GroupSettings,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Result<Self, ControllerError> {
        let fresh_id = kafka_cluster_id(entropy.uuid());
        let snapshot = store.load(&fresh_id)?;
        let mut state = State::default();
        for t in snapshot.topics {
            let meta = Arc::new(TopicMeta { id: t.id, name: t.name, partitions: t.partitions, configs: t.configs });
            state.by_name.insert(meta.name.clone(), meta.clone());
            state.by_id.insert(meta.id, meta);
        }
        for p in snapshot.partitions {
            state.partitions.insert(
                (p.topic_id, p.partition),
                PartitionState {
                    offsets: Some(PartitionOffsets { log_start_offset: p.log_start_offset, next_offset: p.next_offset }),
                    recent: VecDeque::new(),
                    open_txns: BTreeMap::new(),
                },
            );
        }
        for o in snapshot.open_txns {
            if let Some(p) = state.partitions.get_mut(&(o.topic_id, o.partition)) {
                p.open_txns.insert(o.producer_id, o.first_offset);
            }
        }
        for (id, body) in snapshot.transactions {
            match txn::decode(&id, &body) {
                Some(t) => {
                    state.txn_of.insert(t.producer_id, id.clone());
                    state.transactions.insert(id, t);
                }
                None => return Err(ControllerError::Unavailable(format!("stored transaction {id} does not decode"))),
            }
        }
        let expired_before = clock.now_ms().saturating_sub(producer_expiry_ms);
        store.expire_producers(expired_before)?;
        state.producers = snapshot.producers.into_iter().collect();
        state.retain_producers(expired_before);
        let state = Arc::new(RwLock::new(state));
        let quotas = quotas::Quotas::load(store.as_ref())?;
        let client_metrics = client_metrics::ClientMetrics::load(store.as_ref())?;
        let groups =
            GroupCoordinator::open(store.clone(), Arc::new(TopicView(state.clone())), clock.clone(), entropy.clone(), group_settings)?;
        let mut bindings = store.acls()?;
        bindings.sort();
        let acls = crate::api::acl::AclSet { version: entropy.next_u64(), bindings };
        let now = clock.now_ms();
        Ok(Self {
            acls: RwLock::new(Arc::new(acls)),
            acl_write: Mutex::new(()),
            leases: Mutex::new(retention::JobLeases::new(retention::DEFAULT_JOB_LEASE_MS, now, now.max(0) as u64)),
            storage: Mutex::new(None),
            commit_window_ms: store::DEFAULT_COMMIT_WINDOW_MS,
            producer_expiry_ms,
            txn_id_expiry_ms: txn::DEFAULT_TRANSACTIONAL_ID_EXPIRATION_MS,
            store,
            state,
            groups,
            write_lock: Mutex::new(()),
            commits: watch::channel(0).0,
            clock,
            entropy: entropy.clone(),
            defaults,
            cluster_id: snapshot.cluster_id,
            stale: Default::default(),
            extents_replaced: entropy.next_u64().into(),
            quotas: quotas.at_version(entropy.next_u64()),
            client_metrics,
        })
    }

    /// Sets Kafka's transactional.id.expiration.ms (`[controller] transactional_id_expiration_ms`).
    pub fn with_transactional_id_expiration_ms(mut self, ms: i64) -> Self {
        self.txn_id_expiry_ms = ms;
        self
    }

    /// Sets `[controller] job_lease_ms`. `took_over`: this controller replaces another one that
    /// may have granted leases, so it grants none for one lease length.
    pub fn with_job_leases(self, ttl_ms: i64, took_over: bool) -> Self {
        let now = self.clock.now_ms();
        let from = if took_over { now.saturating_add(ttl_ms) } else { now };
        *self.leases.lock().unwrap_or_else(|p| p.into_inner()) = retention::JobLeases::new(ttl_ms, from, now.max(0) as u64);
        self
    }

    /// Sets `[controller] object_commit_window_ms`.
    pub fn with_commit_window_ms(mut self, ms: i64) -> Self {
        assert!(ms > 0, "commit window of {ms} ms");
        self.commit_window_ms = ms;
        self
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// True once the store refused a write as fenced or stale: this instance must be dropped.
    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes fenced/stale refusals (see [`Controller::is_stale`]) and converts the error.
    fn store_error(&self, e: StoreError) -> ControllerError {
        if matches!(e, StoreError::Fenced(_) | StoreError::Stale(_)) {
            self.stale.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        e.into()
    }

    /// The consumer group coordinator.
    pub fn groups(&self) -> &Arc<GroupCoordinator> {
        &self.groups
    }

    /// Consumer lag of every committed offset: (group, topic, partition, high watermark minus
    /// committed offset, at least 0). Offsets of deleted topics are left out.
    pub fn group_lags(&self) -> Vec<(String, String, i32, i64)> {
        self.groups
            .committed_offsets()
            .into_iter()
            .filter_map(|(g, t, p, committed)| {
                let meta = self.topic(TopicRef::Name(&t))?;
                let end = self.offsets(meta.id, p).ok()?.next_offset;
                Some((g, t, p, (end - committed).max(0)))
            })
            .collect()
    }

    /// Serializes writers: one plan, one store transaction at a time.
    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>> {
        let s = self.read();
        match r {
            TopicRef::Name(n) => s.by_name.get(n).cloned(),
            TopicRef::Id(id) => s.by_id.get(&id).cloned(),
        }
    }

    pub fn topics(&self) -> Vec<Arc<TopicMeta>> {
        let mut v: Vec<_> = self.read().by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Log start and high watermark of a partition.
    pub fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError> {
        self.read()
            .partitions
            .get(&(topic_id, partition))
            .and_then(|p| p.offsets)
            .ok_or(ControllerError::UnknownTopicOrPartition)
    }

    /// A receiver whose value changes after every commit (long-polling fetches wait on it).
    pub fn commit_watch(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Blocking.
    pub fn create_topic(&self, req: &CreateTopic) -> Result<Arc<TopicMeta>, ControllerError> {
        validate_topic_name(&req.name)?;
        let partitions = if req.partitions == -1 { self.defaults.num_partitions } else { req.partitions };
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(ControllerError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {PARTITIONS_MAX}, got {partitions}"
            )));
        }
        if req.replication_factor == 0 || req.replication_factor < -1 {
            return Err(ControllerError::InvalidReplicationFactor(format!(
                "replication factor must be -1 or positive, got {}",
                req.replication_factor
            )));
        }
        validate_configs(&req.configs)?;
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.read().by_name.contains_key(&req.name) {
            return Err(ControllerError::TopicAlreadyExists(req.name.clone()));
        }
        // Under write_lock: no other creation can pass the same check meanwhile.
        let total: u64 = self.read().by_id.values().map(|t| t.partitions.max(0) as u64).sum();
        if total + partitions as u64 > self.defaults.max_partitions_total {
            return Err(ControllerError::PolicyViolation(format!(
                "{partitions} more partitions would exceed max_partitions_total = {} ({total} exist)",
                self.defaults.max_partitions_total
            )));
        }
        let meta = TopicMeta { id: self.entropy.uuid(), name: req.name.clone(), partitions, configs: req.configs.clone() };
        if req.validate_only {
            return Ok(Arc::new(meta));
        }
        let record = TopicRecord {
            id: meta.id,
            name: meta.name.clone(),
            partitions,
            configs: meta.configs.clone(),
            created_ms: self.clock.now_ms(),
        };
        match self.store.create_topic(&record) {
            Err(StoreError::Conflict(_)) => return Err(ControllerError::TopicAlreadyExists(req.name.clone())),
            other => other?,
        }
        let meta = Arc::new(meta);
        let mut s = self.write();
        s.by_name.insert(meta.name.clone(), meta.clone());
        s.by_id.insert(meta.id, meta.clone());
        for p in 0..partitions {
            s.partitions.insert(
                (meta.id, p),
                PartitionState {
                    offsets: Some(PartitionOffsets { log_start_offset: 0, next_offset: 0 }),
                    recent: VecDeque::new(),
                    open_txns: BTreeMap::new(),
                },
            );
        }
        Ok(meta)
    }

    /// Blocking. Creates one of Kafka's internal topics, laid out as Kafka does
    /// ([`crate::api::internal_topic_layout`]); the agents ask for it when a client first needs
    /// it. Any other name is refused.
    pub fn create_internal_topic(&self, name: &str) -> Result<Arc<TopicMeta>, ControllerError> {
        let Some((partitions, configs)) = crate::api::internal_topic_layout(name) else {
            return Err(ControllerError::InvalidTopicName(format!("{name:?} is not an internal topic this controller creates")));
        };
        self.create_topic(&CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor: -1,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            validate_only: false,
        })
    }

    /// Blocking. CreatePartitions: grows a topic to `req.count` partitions (Kafka's checks in
    /// [`partitions::added`], then this cluster's limits), the new ones empty. Returns the topic
    /// as it is (or, `validate_only`, would be) afterwards.
    pub fn create_partitions(&self, req: &CreatePartitions) -> Result<Arc<TopicMeta>, ControllerError> {
        let _w = self.lock_writes();
        let meta = self.topic(TopicRef::Name(&req.name)).ok_or(ControllerError::UnknownTopicOrPartition)?;
        let added = partitions::added(&meta.name, meta.partitions, req)?;
        if req.count > PARTITIONS_MAX {
            return Err(ControllerError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {PARTITIONS_MAX}, got {}",
                req.count
            )));
        }
        // Under write_lock: no creation or growth can pass the same check meanwhile.
        let total: u64 = self.read().by_id.values().map(|t| t.partitions.max(0) as u64).sum();
        if total + added as u64 > self.defaults.max_partitions_total {
            return Err(ControllerError::PolicyViolation(format!(
                "{added} more partitions would exceed max_partitions_total = {} ({total} exist)",
                self.defaults.max_partitions_total
            )));
        }
        let grown = Arc::new(TopicMeta { partitions: req.count, ..(*meta).clone() });
        if req.validate_only {
            return Ok(grown);
        }
        self.store.add_partitions(meta.id, meta.partitions, req.count).map_err(|e| self.store_error(e))?;
        let mut s = self.write();
        for p in meta.partitions..req.count {
            let fresh = PartitionState {
                offsets: Some(PartitionOffsets { log_start_offset: 0, next_offset: 0 }),
                recent: VecDeque::new(),
                open_txns: BTreeMap::new(),
            };
            // A partition count only grows: the new partitions are new to memory too.
            assert!(s.partitions.insert((meta.id, p), fresh).is_none(), "partition {}-{p} existed before it was added", meta.name);
        }
        s.by_name.insert(grown.name.clone(), grown.clone());
        s.by_id.insert(grown.id, grown.clone());
        Ok(grown)
    }

    /// Blocking. Returns the deleted topic.
    pub fn delete_topic(&self, r: TopicRef<'_>) -> Result<Arc<TopicMeta>, ControllerError> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let meta = self.topic(r).ok_or(match r {
            TopicRef::Name(_) => ControllerError::UnknownTopicOrPartition,
            TopicRef::Id(_) => ControllerError::UnknownTopicId,
        })?;
        self.store.delete_topic(meta.id, &meta.name, self.clock.now_ms())?;
        self.groups.forget_topic(&meta.name, meta.id);
        let mut s = self.write();
        s.by_name.remove(&meta.name);
        s.by_id.remove(&meta.id);
        for p in 0..meta.partitions {
            s.partitions.remove(&(meta.id, p));
        }
        s.producers.retain(|(_, topic, _), _| *topic != meta.id);
        Ok(meta)
    }

    /// Blocking. Commits an uploaded object: assigns offsets to its extents in one store
    /// transaction, after the idempotent producers' sequence checks. Idempotent on the object
    /// key: committing the same key again returns the offsets of the first commit. Returns each
    /// extent's base offset (a retried batch's original one) or error, in input order.
    pub fn commit_object(&self, req: &CommitRequest) -> Result<Vec<Result<i64, ControllerError>>, ControllerError> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.commit_object_locked(req)
    }

    /// Blocking. Group commit: like [`Controller::commit_object`] for each request, in order,
    /// with one store transaction for all of them (up to [`GROUP_COMMIT_OBJECTS_MAX`]). A
    /// request whose key is already committed, or repeated in the batch, is answered like a
    /// replay; if the store refuses the batch for one request's sake (a doomed key), each
    /// request is committed alone instead, so one bad request never fails the others.
    pub fn commit_objects(&self, reqs: &[CommitRequest]) -> Vec<CommitResult> {
        if self.is_stale() {
            return reqs.iter().map(|_| Err(ControllerError::Unavailable("controller view is stale".into()))).collect();
        }
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Option<CommitResult>> = vec![None; reqs.len()];
        let now_ms = self.clock.now_ms();
        // Plan every fresh request against the offsets the earlier ones leave.
        let mut seen = std::collections::HashSet::new();
        let mut overlay: HashMap<(Uuid, i32), PartitionOffsets> = HashMap::new();
        let mut producer_overlay: HashMap<ProducerKey, ProducerState> = HashMap::new();
        let mut fresh = Vec::new();
        for (i, req) in reqs.iter().enumerate().take(GROUP_COMMIT_OBJECTS_MAX) {
            // Transactional commits (markers, data of open transactions) are committed alone,
            // after the batch: so is everything after them, keeping the input order.
            if req.txn_end.is_some() || req.extents.iter().any(|e| e.producer.as_ref().is_some_and(|p| p.transactional)) {
                break;
            }
            if !seen.insert(req.object_key.as_str()) {
                continue;
            }
            match self.store.committed_extents(&req.object_key) {
                Ok(Some(_)) => continue,
                Ok(None) if key_too_old(&req.object_key, now_ms, self.commit_window_ms) => {
                    out[i] = Some(Err(too_old(&req.object_key)));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    out[i] = Some(Err(self.store_error(e)));
                    continue;
                }
            }
            let key: Arc<str> = Arc::from(req.object_key.as_str());
            let mut plan = {
                let s = self.read();
                let view = Overlaid { base: &*s, offsets: &overlay, producers: &producer_overlay };
                log::plan_commit(&key, req.object_size_bytes, &req.extents, now_ms, &view)
            };
            let records = plan.appended();
            for r in &records {
                overlay.insert(
                    (r.topic_id, r.partition),
                    PartitionOffsets {
                        log_start_offset: self.offsets(r.topic_id, r.partition).map(|o| o.log_start_offset).unwrap_or(0),
                        next_offset: r.end_offset,
                    },
                );
            }
            let producer_states = std::mem::take(&mut plan.producers);
            producer_overlay.extend(producer_states.iter().map(|(k, v)| (*k, v.clone())));
            let object = ObjectRecord {
                key: req.object_key.clone(),
                size_bytes: req.object_size_bytes,
                agent: req.agent.clone(),
                committed_ms: now_ms,
            };
            let producer_rows: Vec<_> = producer_states.into_iter().collect();
            fresh.push((i, object, records, producer_rows, plan));
        }
        let no_txn = TxnEffects::default();
        let batch: Vec<store::ObjectCommit<'_>> = fresh
            .iter()
            .map(|(i, o, records, producers, _)| (o, records.as_slice(), reqs[*i].wal.as_ref(), producers.as_slice(), &no_txn))
            .collect();
        let written = if batch.is_empty() { Ok(()) } else { self.store.commit_objects(&batch) };
        drop(batch);
        match written {
            Ok(()) => {
                let mut s = self.write();
                for (i, _, records, producers, plan) in fresh {
                    for r in records {
                        s.apply_extent(r);
                    }
                    s.producers.extend(producers);
                    s.commits_since_expiry += 1;
                    out[i] = Some(Ok(plan.base_offsets()));
                }
                let sweep = s.commits_since_expiry >= PRODUCER_EXPIRY_SWEEP_COMMITS;
                drop(s);
                if sweep && let Err(e) = self.expire_producers(now_ms) {
                    tracing::warn!(error = %e, "expiring idle producers failed; retried after later commits");
                }
                if out.iter().any(|o| o.as_ref().is_some_and(|r| r.is_ok())) {
                    self.commits.send_modify(|n| *n += 1);
                }
            }
            Err(StoreError::Conflict(_)) => {} // each is committed alone below
            Err(e) => {
                let e = self.store_error(e);
                for (i, ..) in fresh {
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
        // Replays, repeats, requests beyond the batch limit, and the fallback: one at a time.
        reqs.iter().zip(out).map(|(req, o)| o.unwrap_or_else(|| self.commit_object_locked(req))).collect()
    }

    /// [`Controller::commit_object`] with `write_lock` held.
    fn commit_object_locked(&self, req: &CommitRequest) -> Result<Vec<Result<i64, ControllerError>>, ControllerError> {
        if self.is_stale() {
            return Err(ControllerError::Unavailable("controller view is stale".into()));
        }
        if let Some(done) = self.store.committed_extents(&req.object_key)? {
            let s = self.read();
            return Ok(req
                .extents
                .iter()
                .map(|e| {
                    let stored = done
                        .iter()
                        .find(|d| d.topic_id == e.topic_id && d.partition == e.partition && d.position == e.position)
                        .map(|d| d.base_offset);
                    // Not stored: a duplicate of an idempotent producer's batch, or refused.
                    let duplicate = || {
                        let p = e.producer.as_ref()?;
                        let state = s.producers.get(&(p.producer_id, e.topic_id, e.partition))?;
                        match producers::check(Some(state), p) {
                            Ok(producers::Verdict::Duplicate(base)) => Some(base),
                            _ => None,
                        }
                    };
                    stored.or_else(duplicate).ok_or(ControllerError::UnknownTopicOrPartition)
                })
                .collect());
        }
        let key: Arc<str> = Arc::from(req.object_key.as_str());
        let now_ms = self.clock.now_ms();
        if key_too_old(&req.object_key, now_ms, self.commit_window_ms) {
            return Err(too_old(&req.object_key));
        }
        let mut plan = log::plan_commit(&key, req.object_size_bytes, &req.extents, now_ms, &*self.read());
        let records = plan.appended();
        let mut effects = TxnEffects { opened: std::mem::take(&mut plan.opened), ..TxnEffects::default() };
        let completed = match &req.txn_end {
            Some(end) => Some(self.plan_markers(end, &records, now_ms, &mut plan.producers, &mut effects)?),
            None => None,
        };
        let object =
            ObjectRecord { key: req.object_key.clone(), size_bytes: req.object_size_bytes, agent: req.agent.clone(), committed_ms: now_ms };
        let producer_states = std::mem::take(&mut plan.producers);
        let producer_rows: Vec<_> = producer_states.iter().map(|(k, v)| (*k, v.clone())).collect();
        let write = || match self.store.commit_object(&object, &records, req.wal.as_ref(), &producer_rows, &effects) {
            Err(StoreError::Conflict(m)) => Err(ControllerError::ObjectCollected(m)),
            Err(e) => Err(self.store_error(e)),
            Ok(()) => Ok(()),
        };
        if effects.group_offsets.is_empty() {
            write()?;
        } else {
            self.groups.install_txn_offsets(&effects.group_offsets, write)?;
        }
        let sweep = {
            let mut s = self.write();
            for r in records {
                s.apply_extent(r);
            }
            for o in &effects.opened {
                if let Some(p) = s.partitions.get_mut(&(o.topic_id, o.partition)) {
                    p.open_txns.insert(o.producer_id, o.first_offset);
                }
            }
            for o in &effects.closed {
                if let Some(p) = s.partitions.get_mut(&(o.topic_id, o.partition)) {
                    p.open_txns.remove(&o.producer_id);
                }
            }
            if let Some(t) = completed {
                // A version 2 transaction that exhausted its epoch completes on a new producer id.
                s.txn_of.insert(t.producer_id, t.transactional_id.clone());
                s.transactions.insert(t.transactional_id.clone(), t);
            }
            s.producers.extend(producer_states);
            s.commits_since_expiry += 1;
            s.commits_since_expiry >= PRODUCER_EXPIRY_SWEEP_COMMITS
        };
        if sweep {
            self.expire_producers(now_ms)?;
        }
        self.commits.send_modify(|n| *n += 1);
        Ok(plan.base_offsets())
    }

    /// The effects of committing a transaction's markers (`records`, one per partition): the
    /// transaction must be preparing that outcome at that epoch (else the markers are stale
    /// and the commit is refused). Each partition's open transaction closes (an abort goes to
    /// the aborted index), the producer's epoch there rises to the markers' (fencing zombies),
    /// and a commit's pending offsets become the groups'. Returns the completed transaction.
    fn plan_markers(
        &self,
        end: &TxnEnd,
        records: &[ExtentRecord],
        now_ms: i64,
        producers: &mut HashMap<ProducerKey, ProducerState>,
        effects: &mut TxnEffects,
    ) -> Result<Transaction, ControllerError> {
        let s = self.read();
        let wanted = if end.commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
        let mut t = s
            .transactions
            .get(&end.transactional_id)
            .filter(|t| t.status == wanted && t.producer_id == end.producer_id && t.epoch == end.epoch)
            .cloned()
            .ok_or_else(|| ControllerError::InvalidTxnState(format!("stale markers of {}", end.transactional_id)))?;
        for r in records {
            let first = s.partitions.get(&(r.topic_id, r.partition)).and_then(|p| p.open_txns.get(&end.producer_id).copied());
            if let Some(first_offset) = first {
                let open = OpenTxnRecord { topic_id: r.topic_id, partition: r.partition, producer_id: end.producer_id, first_offset };
                effects.closed.push(open);
                if !end.commit {
                    effects.aborted.push(AbortedTxnRecord {
                        topic_id: r.topic_id,
                        partition: r.partition,
                        producer_id: end.producer_id,
                        first_offset,
                        last_offset: r.base_offset,
                    });
                }
            }
            let key = (end.producer_id, r.topic_id, r.partition);
            let state = producers.entry(key).or_insert_with(|| s.producers.get(&key).cloned().unwrap_or_default());
            if end.epoch > state.epoch {
                state.epoch = end.epoch;
                state.batches.clear();
            }
            state.last_seen_ms = now_ms;
        }
        let offsets = txn::complete(&mut t, now_ms);
        effects.transaction = Some((t.transactional_id.clone(), txn::encode(&t)));
        effects.group_offsets = offsets
            .into_iter()
            .flat_map(|(group_id, os)| {
                os.into_iter().map(move |o| GroupOffsetRecord {
                    group_id: group_id.clone(),
                    topic: o.topic,
                    partition: o.partition,
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata,
                    commit_ms: now_ms,
                })
            })
            .collect();
        Ok(t)
    }

    /// The last stable offset: the first offset of the partition's earliest open transaction,
    /// else the high watermark.
    pub fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError> {
        let s = self.read();
        let p = s.partitions.get(&(topic_id, partition)).ok_or(ControllerError::UnknownTopicOrPartition)?;
        let hw = p.offsets.ok_or(ControllerError::UnknownTopicOrPartition)?.next_offset;
        Ok(p.open_txns.values().min().copied().unwrap_or(hw).min(hw))
    }

    /// DescribeProducers: the producers the controller keeps in each partition (those not
    /// expired), by producer id; an unknown partition is UnknownTopicOrPartition.
    pub fn describe_producers(&self, partitions: &[(Uuid, i32)]) -> Vec<Result<Vec<ProducerDescription>, ControllerError>> {
        let s = self.read();
        let mut found: HashMap<(Uuid, i32), Vec<ProducerDescription>> = HashMap::new();
        let wanted: HashSet<(Uuid, i32)> = partitions.iter().copied().collect();
        for ((pid, topic_id, partition), state) in &s.producers {
            let key = (*topic_id, *partition);
            if !wanted.contains(&key) {
                continue;
            }
            let open = s.partitions.get(&key).and_then(|p| p.open_txns.get(pid)).copied();
            found.entry(key).or_default().push(ProducerDescription {
                producer_id: *pid,
                epoch: state.epoch,
                last_sequence: state.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp_ms: state.last_seen_ms,
                current_txn_start_offset: open.unwrap_or(-1),
            });
        }
        partitions
            .iter()
            .map(|key| {
                if s.partitions.get(key).is_none_or(|p| p.offsets.is_none()) {
                    return Err(ControllerError::UnknownTopicOrPartition);
                }
                let mut producers = found.get(key).cloned().unwrap_or_default();
                producers.sort_by_key(|p| p.producer_id);
                Ok(producers)
            })
            .collect()
    }

    /// Blocking. Aborted transactions overlapping `[from_offset, to_offset)`: (producer id,
    /// first offset), what a read_committed Fetch returns.
    pub fn aborted_txns(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        to_offset: i64,
    ) -> Result<Vec<(i64, i64)>, ControllerError> {
        Ok(self.store.aborted_txns(topic_id, partition, from_offset, to_offset, ABORTED_TXNS_PER_FETCH_MAX)?)
    }

    /// Forgets idempotent producers idle for longer than the expiry, except in partitions where
    /// their transaction is open (caller holds write_lock). Nothing is written when nothing
    /// expires.
    fn expire_producers(&self, now_ms: i64) -> Result<(), ControllerError> {
        let before = now_ms.saturating_sub(self.producer_expiry_ms);
        if !self.read().producers_expire(before) {
            self.write().commits_since_expiry = 0;
            return Ok(());
        }
        self.store.expire_producers(before)?;
        let mut s = self.write();
        s.retain_producers(before);
        s.commits_since_expiry = 0;
        Ok(())
    }

    /// Blocking. A fresh producer id (epoch 0) for an idempotent producer. As in Kafka, a
    /// producer asking again (KIP-360 epoch bump) simply gets a new id.
    pub fn init_producer_id(&self) -> Result<(i64, i16), ControllerError> {
        Ok((self.store.allocate_producer_id()?, 0))
    }

    /// Blocking. Orphan collection: for each key, true if it is not committed and now never will
    /// be (its object may be deleted), false if it is committed (keep it). See
    /// [`MetadataStore::doom_uncommitted`].
    pub fn collect_orphans(&self, keys: &[String]) -> Result<Vec<bool>, ControllerError> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.store.doom_uncommitted(keys, self.clock.now_ms())?)
    }

    /// Blocking. Extents compaction may rewrite (see [`MetadataStore::compaction_candidates`]).
    pub fn compaction_candidates(&self, req: &crate::api::CandidatesRequest) -> Result<Vec<ExtentRecord>, ControllerError> {
        Ok(self.store.compaction_candidates(req)?)
    }

    /// See [`Controller::extents_replaced`]'s field: changes with every compaction swap.
    pub fn extents_replaced(&self) -> u64 {
        self.extents_replaced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Blocking. Compaction's swap: `req.old` (extents of one partition, or of several for a
    /// partition-sorted object, exactly as stored) replaced by `req.new` (in the new object
    /// `req.object_key`), covering exactly the same offsets of each partition, in one store
    /// transaction that also lists the objects left unreferenced as garbage. Refused with
    /// nothing written if the old extents of any partition changed meanwhile
    /// ([`ControllerError::ExtentsChanged`]: retention, DeleteRecords or another compaction got
    /// there first) or the new key was collected as an orphan. Offsets never change.
    pub fn replace_extents(&self, lease: &crate::api::jobs::JobLease, req: &crate::api::ReplaceExtents) -> Result<(), ControllerError> {
        check_replacement(req)?;
        if self.is_stale() {
            return Err(ControllerError::Unavailable("controller view is stale".into()));
        }
        let _w = self.lock_writes();
        // Under the write lock: a lease that ran out changes nothing.
        self.check_lease(lease)?;
        for old in req.old.chunk_by(|a, b| (a.topic_id, a.partition) == (b.topic_id, b.partition)) {
            let (topic_id, partition) = (old[0].topic_id, old[0].partition);
            let offsets = self.offsets(topic_id, partition)?;
            let (first, last) = (old[0].base_offset, old[old.len() - 1].end_offset);
            if first < offsets.log_start_offset || last > offsets.next_offset {
                return Err(ControllerError::ExtentsChanged(format!(
                    "{topic_id}-{partition} [{first}, {last}) is outside the log [{}, {})",
                    offsets.log_start_offset, offsets.next_offset
                )));
            }
        }
        let object = ObjectRecord {
            key: req.object_key.clone(),
            size_bytes: req.object_size_bytes,
            agent: req.agent.clone(),
            committed_ms: self.clock.now_ms(),
        };
        match self.store.replace_extents(&object, &req.old, &req.new) {
            Ok(()) => {}
            Err(StoreError::Stale(m)) => return Err(ControllerError::ExtentsChanged(m)),
            Err(StoreError::Conflict(m)) => return Err(ControllerError::ObjectCollected(m)),
            Err(e) => return Err(self.store_error(e)),
        }
        let mut s = self.write();
        for new in req.new.chunk_by(|a, b| (a.topic_id, a.partition) == (b.topic_id, b.partition)) {
            if let Some(p) = s.partitions.get_mut(&(new[0].topic_id, new[0].partition)) {
                replace_recent(&mut p.recent, new);
            }
        }
        drop(s);
        self.extents_replaced.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Extents of a partition starting with the one holding `from_offset`, until `max_bytes`
    /// are covered (at least one), from memory. `Ok(None)`: not in memory, ask
    /// [`Controller::find_extents`].
    pub fn find_recent_extents(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Option<Vec<ExtentRecord>>, ControllerError> {
        let s = self.read();
        let p = s.partitions.get(&(topic_id, partition)).ok_or(ControllerError::UnknownTopicOrPartition)?;
        if p.recent.front().is_none_or(|e| e.base_offset > from_offset) {
            return Ok(None);
        }
        let start = p.recent.partition_point(|e| e.end_offset <= from_offset);
        Ok(Some(take_bytes(p.recent.range(start..).cloned(), max_bytes)))
    }

    /// Like [`Controller::find_recent_extents`], falling back to the store (blocking).
    pub fn find_extents(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<ExtentRecord>, ControllerError> {
        if let Some(found) = self.find_recent_extents(topic_id, partition, from_offset, max_bytes)? {
            return Ok(found);
        }
        let found = self.store.find_extents(topic_id, partition, from_offset, STORE_LOOKUP_EXTENTS_MAX)?;
        Ok(take_bytes(found.into_iter(), max_bytes))
    }

    /// Blocking. The highest WAL entry of `log_id` committed so far (0: none).
    pub fn wal_mark(&self, log_id: &str) -> Result<u64, ControllerError> {
        Ok(self.store.wal_mark(log_id)?)
    }

    /// Blocking. The first extent holding a timestamp >= `timestamp`.
    pub fn extent_for_timestamp(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, ControllerError> {
        Ok(self.store.first_extent_at_or_after(topic_id, partition, timestamp)?)
    }

    /// Blocking. The extent holding the partition's largest timestamp.
    pub fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, ControllerError> {
        Ok(self.store.extent_with_max_timestamp(topic_id, partition)?)
    }
}

/// The controller's topics as the group coordinator sees them.
struct TopicView(Arc<RwLock<State>>);

impl TopicLookup for TopicView {
    fn by_name(&self, name: &str) -> Option<Arc<TopicMeta>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).by_name.get(name).cloned()
    }
    fn by_id(&self, id: Uuid) -> Option<Arc<TopicMeta>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).by_id.get(&id).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).by_name.keys().cloned().collect()
    }
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Option<PartitionOffsets> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).partitions.get(&(topic_id, partition)).and_then(|p| p.offsets)
    }
}

/// A swap's shape, before anything is written: `req.topic_id`/`req.partition` the first
/// partition; old and new sorted by partition then offset, each non-empty and not overlapping;
/// the new ones all in the new object, inside it; and both covering exactly the same offsets of
/// the same partitions (compaction never moves, adds or drops an offset).
fn check_replacement(req: &crate::api::ReplaceExtents) -> Result<(), ControllerError> {
    let bad = |why: String| Err(ControllerError::InvalidRequest(format!("replace_extents of {}: {why}", req.object_key)));
    if req.old.is_empty() || req.new.is_empty() {
        return bad("nothing to replace".into());
    }
    // Each partition's offset runs: (topic, partition, base, end), in order.
    type Run = (Uuid, i32, i64, i64);
    let runs = |extents: &[ExtentRecord]| -> Result<Vec<Run>, String> {
        let mut runs: Vec<Run> = Vec::new();
        if (extents[0].topic_id, extents[0].partition) != (req.topic_id, req.partition) {
            let e = &extents[0];
            return Err(format!("the first extent is of {}-{}, not {}-{}", e.topic_id, e.partition, req.topic_id, req.partition));
        }
        for e in extents {
            if e.end_offset <= e.base_offset || e.length == 0 {
                return Err(format!("an empty extent at {}", e.base_offset));
            }
            match runs.last_mut() {
                Some((t, p, _, end)) if (*t, *p) == (e.topic_id, e.partition) && *end == e.base_offset => *end = e.end_offset,
                Some((t, p, _, end)) if (*t, *p) == (e.topic_id, e.partition) && *end > e.base_offset => {
                    return Err(format!("extents overlap or are out of order at {}", e.base_offset));
                }
                Some((t, p, _, _)) if (*t, *p) > (e.topic_id, e.partition) => {
                    return Err(format!("partitions out of order at {}-{}", e.topic_id, e.partition));
                }
                _ => runs.push((e.topic_id, e.partition, e.base_offset, e.end_offset)),
            }
        }
        Ok(runs)
    };
    let (old, new) = match (runs(&req.old), runs(&req.new)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(why), _) | (_, Err(why)) => return bad(why),
    };
    if old != new {
        return bad(format!("the new extents cover {new:?}, the old ones {old:?}"));
    }
    if let Some(e) = req.new.iter().find(|e| {
        *e.object_key != *req.object_key || e.object_size != req.object_size_bytes || e.position + e.length > req.object_size_bytes
    }) {
        return bad(format!("new extent at {} is not inside the new object", e.base_offset));
    }
    Ok(())
}

/// A partition's recent extents after a swap for `new`: the ones the new extents cover give
/// way to them (the new ones ending after the oldest recent one come in), so the recent
/// extents stay a contiguous run to the high watermark; nothing changes if none is covered.
fn replace_recent(recent: &mut VecDeque<ExtentRecord>, new: &[ExtentRecord]) {
    let Some(front) = recent.front().map(|e| e.base_offset) else { return };
    let covered = |e: &ExtentRecord| new.iter().any(|n| n.base_offset < e.end_offset && e.base_offset < n.end_offset);
    if !recent.iter().any(covered) {
        return;
    }
    let mut out: Vec<ExtentRecord> = recent
        .iter()
        .filter(|e| !covered(e))
        .cloned()
        .chain(new.iter().filter(|n| n.end_offset > front).cloned())
        .collect();
    out.sort_by_key(|e| e.base_offset);
    let skip = out.len().saturating_sub(RECENT_EXTENTS_MAX);
    let out: VecDeque<ExtentRecord> = out.into_iter().skip(skip).collect();
    debug_assert!(out.iter().zip(out.iter().skip(1)).all(|(a, b)| a.end_offset == b.base_offset), "recent extents not contiguous");
    *recent = out;
}

/// Whether a key not committed yet was made before the commit window (`window_ms` back from
/// `now_ms`): its orphan mark (doomed as an orphan, or deleted as garbage after its commit) may
/// be gone, so it is never committed; the agent uploads its data again under a new key. Keys of
/// another syntax (tests) are not checked.
fn key_too_old(key: &str, now_ms: i64, window_ms: i64) -> bool {
    crate::object::keys::parse_object_key(key).is_some_and(|k| k.created_ms < now_ms.saturating_sub(window_ms))
}

fn too_old(key: &str) -> ControllerError {
    ControllerError::ObjectCollected(format!("object {key} was made before the commit window and never committed: upload it again"))
}

/// Extents in order until they cover `max_bytes` (always at least one).
fn take_bytes(iter: impl Iterator<Item = ExtentRecord>, max_bytes: u64) -> Vec<ExtentRecord> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for e in iter {
        if !out.is_empty() && bytes >= max_bytes {
            break;
        }
        bytes += e.length;
        out.push(e);
    }
    out
}

/// Kafka cluster ids are a UUID in URL-safe base64 without padding (22 characters).
fn kafka_cluster_id(id: Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    for chunk in id.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WalMark;
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::format::object::{ExtentInfo, ProducerBatch};
    use store::sqlite::SqliteStore;

    fn open(path: &std::path::Path) -> Controller {
        let store = Arc::new(SqliteStore::open(path).unwrap());
        Controller::open(store, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(3))).unwrap()
    }

    fn create(c: &Controller, name: &str, partitions: i32) -> Arc<TopicMeta> {
        c.create_topic(&CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: -1,
            configs: BTreeMap::new(),
            validate_only: false,
        })
        .unwrap()
    }

    fn extent(t: Uuid, p: i32, position: u64, n: i64) -> ExtentInfo {
        ExtentInfo {
            topic_id: t,
            partition: p,
            position,
            length: 100,
            batch_count: 1,
            offset_count: n,
            max_timestamp: position as i64,
            producer: None,
        }
    }

    #[test]
    fn commits_assign_dense_offsets_survive_restart_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let c = open(&db);
        let t = create(&c, "t", 2);
        let req = CommitRequest {
            object_key: "o1".into(),
            object_size_bytes: 300,
            agent: "a".into(),
            extents: vec![extent(t.id, 0, 0, 5), extent(t.id, 1, 100, 2)],
            wal: Some(WalMark { log_id: "w".into(), entry_id: 7 }),
            txn_end: None,
        };
        assert_eq!(c.commit_object(&req).unwrap(), vec![Ok(0), Ok(0)]);
        let req2 = CommitRequest {
            object_key: "o2".into(),
            extents: vec![extent(t.id, 0, 0, 3)],
            wal: Some(WalMark { log_id: "w".into(), entry_id: 9 }),
            ..req.clone()
        };
        assert_eq!(c.wal_mark("w").unwrap(), 7);
        assert_eq!(c.commit_object(&req2).unwrap(), vec![Ok(5)]);
        // Replaying a commit returns the first answer and assigns nothing new.
        assert_eq!(c.commit_object(&req).unwrap(), vec![Ok(0), Ok(0)]);
        assert_eq!(c.offsets(t.id, 0).unwrap().next_offset, 8);
        let found = c.find_extents(t.id, 0, 6, 1).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].base_offset, 5);
        let cluster = c.cluster_id().to_string();
        drop(c);

        let c = open(&db);
        assert_eq!(c.wal_mark("w").unwrap(), 9);
        assert_eq!(c.wal_mark("other").unwrap(), 0);
        assert_eq!(c.cluster_id(), cluster);
        assert_eq!(c.offsets(t.id, 0).unwrap().next_offset, 8);
        let all = c.find_extents(t.id, 0, 0, u64::MAX).unwrap();
        assert_eq!(all.iter().map(|e| e.base_offset).collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!(c.topic(TopicRef::Name("t")).unwrap().id, t.id);
        assert_eq!(c.extent_for_timestamp(t.id, 1, 50).unwrap().unwrap().base_offset, 0);
        assert_eq!(c.commit_object(&req2).unwrap(), vec![Ok(5)]);
    }

    #[test]
    fn describe_producers_and_partition_sizes_show_what_commits_left() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("c.db"));
        let t = create(&c, "t", 2);
        let batch =
            |first, last| ProducerBatch { producer_id: 42, epoch: 3, first_sequence: first, last_sequence: last, transactional: false };
        let mut e0 = extent(t.id, 0, 0, 5);
        e0.producer = Some(batch(0, 4));
        let req = CommitRequest {
            object_key: "o1".into(),
            object_size_bytes: 200,
            agent: "a".into(),
            extents: vec![e0, extent(t.id, 1, 100, 2)],
            wal: None,
            txn_end: None,
        };
        c.commit_object(&req).unwrap();
        e0.producer = Some(batch(5, 6));
        c.commit_object(&CommitRequest { object_key: "o2".into(), extents: vec![e0], ..req.clone() }).unwrap();

        let got = c.describe_producers(&[(t.id, 0), (t.id, 1), (t.id, 2)]);
        let p0 = got[0].as_ref().unwrap();
        assert_eq!(p0.len(), 1);
        assert_eq!((p0[0].producer_id, p0[0].epoch, p0[0].last_sequence, p0[0].current_txn_start_offset), (42, 3, 6, -1));
        assert!(p0[0].last_timestamp_ms > 0);
        assert_eq!(got[1].as_ref().unwrap(), &Vec::new());
        assert!(matches!(got[2], Err(ControllerError::UnknownTopicOrPartition)));

        let mut sizes = c.partition_sizes().unwrap();
        sizes.sort();
        assert_eq!(sizes, vec![(t.id, 0, 200), (t.id, 1, 100)]);
    }

    #[test]
    fn an_object_is_committed_or_collected_never_both_however_they_race() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(open(&dir.path().join("c.db")));
        let t = create(&c, "t", 4);
        let keys: Vec<String> = (0..200).map(|i| format!("00/a/{i:05}.sso")).collect();
        let committer = {
            let (c, keys, topic_id) = (c.clone(), keys.clone(), t.id);
            std::thread::spawn(move || {
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| {
                        let req = CommitRequest {
                            object_key: k.clone(),
                            object_size_bytes: 100,
                            agent: "a".into(),
                            extents: vec![extent(topic_id, (i % 4) as i32, 0, 1)],
                            wal: None,
                            txn_end: None,
                        };
                        match c.commit_object(&req) {
                            Ok(r) => r.iter().all(|e| e.is_ok()),
                            Err(ControllerError::ObjectCollected(m)) => {
                                assert!(m.contains("orphan"), "{m}");
                                false
                            }
                            Err(e) => panic!("{e}"),
                        }
                    })
                    .collect::<Vec<bool>>()
            })
        };
        // The collector walks the same keys from the other end, in batches, meeting the
        // committer somewhere in the middle.
        let mut doomed = vec![false; keys.len()];
        for chunk in (0..keys.len()).rev().collect::<Vec<_>>().chunks(7) {
            let batch: Vec<String> = chunk.iter().map(|i| keys[*i].clone()).collect();
            for (i, d) in chunk.iter().zip(c.collect_orphans(&batch).unwrap()) {
                doomed[*i] = d;
            }
        }
        let committed = committer.join().unwrap();
        for (i, key) in keys.iter().enumerate() {
            assert!(committed[i] != doomed[i], "{key}: committed {} doomed {}", committed[i], doomed[i]);
            // Asking again never changes the answer: a committed key stays kept.
            assert_eq!(c.collect_orphans(std::slice::from_ref(key)).unwrap(), vec![doomed[i]]);
        }
        let total: i64 = (0..4).map(|p| c.offsets(t.id, p).unwrap().next_offset).sum();
        assert_eq!(total, committed.iter().filter(|c| **c).count() as i64);
    }

    /// A key made longer ago than orphan marks are kept is never committed (its mark may be
    /// gone); a replay of a key committed back then is still answered.
    #[test]
    fn keys_older_than_a_day_are_not_committed_but_their_replays_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let clock = Arc::new(crate::clock::ManualClock::new(10 * store::DEFAULT_COMMIT_WINDOW_MS as u64));
        let entropy = SeededEntropy::new(4);
        let c = Controller::open(store, TopicsConfig::default(), 86_400_000, clock.clone(), Arc::new(SeededEntropy::new(3))).unwrap();
        let t = create(&c, "t", 1);
        let old = crate::object::keys::new_object_key("", "a", &*clock, &entropy);
        let committed = crate::object::keys::new_object_key("", "a", &*clock, &entropy);
        let req = |key: &str| CommitRequest {
            object_key: key.into(),
            object_size_bytes: 100,
            agent: "a".into(),
            extents: vec![extent(t.id, 0, 0, 1)],
            wal: None,
            txn_end: None,
        };
        assert_eq!(c.commit_object(&req(&committed)).unwrap(), vec![Ok(0)]);
        clock.advance_ms(store::DEFAULT_COMMIT_WINDOW_MS as u64 + 1);
        assert!(matches!(c.commit_object(&req(&old)), Err(ControllerError::ObjectCollected(_))));
        assert!(matches!(c.commit_objects(&[req(&old)])[0], Err(ControllerError::ObjectCollected(_))));
        assert_eq!(c.commit_object(&req(&committed)).unwrap(), vec![Ok(0)]);
        let fresh = crate::object::keys::new_object_key("", "a", &*clock, &entropy);
        assert_eq!(c.commit_object(&req(&fresh)).unwrap(), vec![Ok(1)]);
    }

    #[test]
    fn topic_rules_match_kafka() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("c.db"));
        create(&c, "a", -1);
        let mk = |name: &str, partitions, configs: &[(&str, &str)]| CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 3,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            validate_only: false,
        };
        assert!(matches!(c.create_topic(&mk("a", 1, &[])), Err(ControllerError::TopicAlreadyExists(_))));
        assert!(matches!(c.create_topic(&mk("bad name", 1, &[])), Err(ControllerError::InvalidTopicName(_))));
        // Kafka's internal topics: the agents' creation lays them out as Kafka does; a client's
        // CreateTopics may name one too (as on Kafka).
        assert!(matches!(c.create_internal_topic("a"), Err(ControllerError::InvalidTopicName(_))));
        assert!(matches!(c.create_internal_topic("__share_group_state"), Err(ControllerError::InvalidTopicName(_))));
        let offsets = c.create_internal_topic("__consumer_offsets").unwrap();
        assert_eq!((offsets.partitions, offsets.configs.get("cleanup.policy").map(String::as_str)), (50, Some("compact")));
        assert!(matches!(c.create_internal_topic("__consumer_offsets"), Err(ControllerError::TopicAlreadyExists(_))));
        assert!(matches!(c.create_topic(&mk("__consumer_offsets", 1, &[])), Err(ControllerError::TopicAlreadyExists(_))));
        c.delete_topic(TopicRef::Name("__consumer_offsets")).unwrap();
        assert_eq!(c.create_topic(&mk("__consumer_offsets", 1, &[])).unwrap().partitions, 1);
        c.delete_topic(TopicRef::Name("__consumer_offsets")).unwrap();
        assert!(matches!(c.create_topic(&mk("b", 0, &[])), Err(ControllerError::InvalidPartitions(_))));
        assert!(matches!(c.create_topic(&mk("b", 1, &[("nope", "1")])), Err(ControllerError::InvalidConfig(_))));
        let b = c.create_topic(&mk("b", 4, &[("retention.ms", "1000")])).unwrap();
        assert_eq!(b.partitions, 4);
        c.delete_topic(TopicRef::Name("b")).unwrap();
        assert!(c.topic(TopicRef::Id(b.id)).is_none());
        assert!(matches!(c.delete_topic(TopicRef::Name("b")), Err(ControllerError::UnknownTopicOrPartition)));
        assert_eq!(kafka_cluster_id(Uuid::nil()), "AAAAAAAAAAAAAAAAAAAAAA");
    }

    fn grow(name: &str, count: i32, validate_only: bool) -> CreatePartitions {
        CreatePartitions { name: name.into(), count, assignments: None, brokers: vec![1], validate_only }
    }

    /// New partitions start empty, take commits, and are still there after a restart; the old
    /// ones keep their offsets; validate_only and refused requests change nothing.
    #[test]
    fn topics_grow_with_empty_partitions_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = open(&path);
        let t = create(&c, "t", 2);
        let commit = |c: &Controller, key: &str, p: i32| {
            let req = CommitRequest {
                object_key: key.into(),
                object_size_bytes: 100,
                agent: "a".into(),
                extents: vec![extent(t.id, p, 0, 3)],
                wal: None,
                txn_end: None,
            };
            c.commit_object(&req).unwrap()
        };
        commit(&c, "o1", 1);
        assert_eq!(c.create_partitions(&grow("t", 5, true)).unwrap().partitions, 5);
        assert_eq!(c.topic(TopicRef::Name("t")).unwrap().partitions, 2, "validate_only changes nothing");
        assert!(c.offsets(t.id, 2).is_err());
        assert!(matches!(c.create_partitions(&grow("nope", 5, false)), Err(ControllerError::UnknownTopicOrPartition)));
        let e = c.create_partitions(&grow("t", 1, false)).unwrap_err();
        assert_eq!(e, ControllerError::InvalidPartitions("The topic t currently has 2 partition(s); 1 would not be an increase.".into()));
        let grown = c.create_partitions(&grow("t", 5, false)).unwrap();
        assert_eq!((grown.id, grown.partitions, &grown.configs), (t.id, 5, &t.configs));
        assert_eq!(*c.topic(TopicRef::Id(t.id)).unwrap(), *grown);
        assert_eq!(c.offsets(t.id, 1).unwrap().next_offset, 3);
        assert_eq!(c.offsets(t.id, 4).unwrap(), PartitionOffsets { log_start_offset: 0, next_offset: 0 });
        assert_eq!(commit(&c, "o2", 4), vec![Ok(0)]);
        assert_eq!(c.create_partitions(&grow("t", 5, false)).unwrap_err().to_string(), "Topic already has 5 partition(s).");
        drop(c);
        let c = open(&path);
        assert_eq!(c.topic(TopicRef::Name("t")).unwrap().partitions, 5);
        assert_eq!(c.offsets(t.id, 4).unwrap().next_offset, 3);
        assert_eq!(c.offsets(t.id, 3).unwrap().next_offset, 0);
        c.delete_topic(TopicRef::Name("t")).unwrap();
        assert!(c.offsets(t.id, 4).is_err());
    }

    #[test]
    fn added_partitions_count_against_the_cluster_caps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let topics = TopicsConfig { max_partitions_total: 10, ..TopicsConfig::default() };
        let c = Controller::open(store, topics, 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(3))).unwrap();
        create(&c, "a", 4);
        create(&c, "b", 2);
        for validate_only in [true, false] {
            let e = c.create_partitions(&grow("a", 9, validate_only)).unwrap_err();
            assert_eq!(e, ControllerError::PolicyViolation("5 more partitions would exceed max_partitions_total = 10 (6 exist)".into()));
        }
        assert_eq!(c.create_partitions(&grow("a", 8, false)).unwrap().partitions, 8);
        assert!(matches!(c.create_partitions(&grow("b", 3, false)), Err(ControllerError::PolicyViolation(_))));
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("c.db"));
        create(&c, "a", 1);
        let e = c.create_partitions(&grow("a", PARTITIONS_MAX + 1, false)).unwrap_err();
        assert_eq!(e.to_string(), "Excessively large number of additional partitions per request.");
        for n in [10_001, 20_001, 30_001, 40_001, 50_001, 60_001, 70_001, 80_001, 90_001, 100_000] {
            c.create_partitions(&grow("a", n, false)).unwrap();
        }
        assert!(matches!(c.create_partitions(&grow("a", PARTITIONS_MAX + 1, false)), Err(ControllerError::InvalidPartitions(_))));
    }

    /// KIP-848: the group coordinator sees the topic grow, bumps the group epoch and hands the
    /// new partitions out on the members' next heartbeats (Kafka's metadata image change).
    #[tokio::test(start_paused = true)]
    async fn a_consumer_group_is_assigned_the_new_partitions_on_its_next_heartbeats() {
        use crate::api::groups::consumer::HeartbeatRequest;
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("c.db"));
        let t = create(&c, "t", 2);
        let hb = |member: &str, epoch: i32, owned: &[i32]| HeartbeatRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: if epoch == 0 { 30_000 } else { -1 },
            subscribed_topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
            owned: Some([(t.id, owned.iter().copied().collect())].into_iter().collect()),
            api_version: 1,
            ..Default::default()
        };
        let owned = |r: &crate::api::groups::consumer::HeartbeatResponse| -> Vec<i32> {
            r.assignment.as_ref().map(|a| a.values().flat_map(|ps| ps.iter().copied()).collect()).unwrap_or_default()
        };
        let groups = c.groups().clone();
        let a = groups.consumer_heartbeat(hb("a", 0, &[])).unwrap();
        let b = groups.consumer_heartbeat(hb("b", 0, &[])).unwrap();
        let a = groups.consumer_heartbeat(hb("a", a.member_epoch, &owned(&a))).unwrap();
        let a = groups.consumer_heartbeat(hb("a", a.member_epoch, &owned(&a))).unwrap();
        let b = groups.consumer_heartbeat(hb("b", b.member_epoch, &[])).unwrap();
        assert_eq!((owned(&a).len(), owned(&b).len()), (1, 1));
        let epoch = groups.consumer_describe("g").unwrap().group_epoch;

        c.create_partitions(&grow("t", 6, false)).unwrap();
        let a = groups.consumer_heartbeat(hb("a", a.member_epoch, &owned(&a))).unwrap();
        let b = groups.consumer_heartbeat(hb("b", b.member_epoch, &owned(&b))).unwrap();
        let d = groups.consumer_describe("g").unwrap();
        assert_eq!(d.group_epoch, epoch + 1, "one bump for the growth");
        assert_eq!((a.member_epoch, b.member_epoch), (d.assignment_epoch, d.assignment_epoch));
        let (mut all, a, b) = ([owned(&a), owned(&b)].concat(), owned(&a), owned(&b));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5], "{a:?} {b:?}");
        assert_eq!((a.len(), b.len()), (3, 3));
    }

    #[test]
    fn partitions_in_total_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let topics = TopicsConfig { max_partitions_total: 10, ..TopicsConfig::default() };
        let c = Controller::open(store, topics, 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(3))).unwrap();
        create(&c, "a", 4);
        let seven =
            CreateTopic { name: "b".into(), partitions: 7, replication_factor: -1, configs: Default::default(), validate_only: false };
        let seven2 = seven.clone();
        assert!(matches!(c.create_topic(&seven), Err(ControllerError::PolicyViolation(_))));
        assert!(c.topic(TopicRef::Name("b")).is_none());
        create(&c, "b", 6);
        // Deleting a topic gives its partitions back.
        c.delete_topic(TopicRef::Name("a")).unwrap();
        assert!(c.create_topic(&CreateTopic { name: "c".into(), partitions: 4, ..seven }).is_ok());
        assert!(matches!(
            c.create_topic(&CreateTopic { name: "d".into(), partitions: 1, ..seven2 }),
            Err(ControllerError::PolicyViolation(_))
        ));
    }
}
