//! The agent's side of a remote controller (`[controller] mode = "remote"`): [`Remote`], a
//! [`ControllerClient`] over gRPC.
//!
//! - **Cache.** Topics and high watermarks are served from a local cache (the trait's
//!   synchronous methods need them on every produce and fetch). A background task keeps it
//!   fresh: snapshot at (re)connection, then the controller's `Watch` stream of commit events,
//!   which also wakes long-polling fetches (`commit_watch`). The agent's own commits and topic
//!   changes update the cache at once, so an agent reads its own writes.
//! - **Following the active replica.** Calls go to the last known active controller. An
//!   UNAVAILABLE answer naming the active one (`x-sidestream-active`) switches to it; a
//!   transport failure moves to the next configured address. Calls retry with backoff for up
//!   to `call_deadline`; the uploader retries failed commits for as long as it takes, so a
//!   controller restart or failover delays acknowledgements but loses nothing.
//! - **TLS.** With `[controller] tls_ca_file` every address is dialled over TLS (`https`) and
//!   the controller's certificate verified for that address's host, the configured ones and
//!   the standbys' hints alike; `tls_cert_file`/`tls_key_file` are the client certificate
//!   (mTLS). A failed handshake is named in the error; start-up gives up at once when every
//!   configured address refused one (a configuration error, not an outage).
//! - **Partition index cache.** Committed extents are cached per partition
//!   ([`ExtentCache`], bounded by `[agent] index_cache_bytes_max`); the watch stream's events
//!   carry each commit's extents, which extend the cached partitions before their high
//!   watermark moves, so tail reads and repeated reads make no controller call. Deleted topics
//!   and a moved log start invalidate; a new cluster id (another store) clears it all. Lookups
//!   are counted by where they were answered (`sidestream_index_lookups_total{source}`).
//! - **ACLs.** The controller's ACLs are held whole ([`ControllerClient::acls`]); snapshots and
//!   `Watch` events announce their version, and the set is loaded again (`all_acls` call) when the
//!   announced version differs from the one held (a failed load is retried at the next
//!   heartbeat). The agent's own CreateAcls/DeleteAcls load it before answering.
//! - **Live agents.** The registration and every heartbeat answer list the live agents in
//!   cluster mode; [`ControllerClient::live_agents`] serves the last list.
//! - **Fencing.** The agent registers for an epoch and heartbeats every third of its lease. A
//!   call refused as fenced (FAILED_PRECONDITION: lease expired, replaced, or a new active
//!   controller that does not know it) re-registers for a new epoch and retries.
//! - **Client quotas.** The controller's quotas are held whole ([`ControllerClient::client_quotas`]);
//!   snapshots and `Watch` events announce their version, and the set is loaded again
//!   (`all_client_quotas` call) when the announced version differs from the one held (a failed
//!   load is retried at the next heartbeat).
//!
//! - **Calls.** Every call of the table ([`crate::api::calls`]) is one `Call` RPC to the active
//!   controller, which answers it as the embedded controller would. The last
//!   stable offset comes with the high watermark in snapshots and `Watch` events, so fetches
//!   read it from the cache; the agent's own commits move it only when that is certainly right
//!   (nothing unseen before them, no open transaction), else the next event does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use uuid::Uuid;

use super::ControllerClient;
use super::extent_cache::ExtentCache;
use crate::api::acl::AclSet;
use crate::api::calls::{self, Call, Reply};
use crate::api::quota::QuotaSet;
use crate::api::rpc::{self, GrpcClient};
use crate::api::tls::{self, TlsFiles};
use crate::api::{ControllerError, ExtentRecord, ListenerAddress, LiveAgent, PartitionOffsets, TopicMeta, TopicRef};
use crate::metrics::{self, Counter};

/// Backoff between retries of a failed call.
const RETRY_BACKOFF_MIN_MS: u64 = 20;
const RETRY_BACKOFF_MAX_MS: u64 = 500;

/// What the remote client needs, as data.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Controller replicas, `host:port`.
    pub addresses: Vec<String>,
    pub token: Option<String>,
    /// With a CA: dial controllers over TLS and verify them; with an identity too: present it
    /// (mTLS).
    pub tls: TlsFiles,
    /// This agent's name (its registration and the objects' `agent`).
    pub agent: String,
    /// How long one call retries before answering a retriable error.
    pub call_deadline: Duration,
    pub connect_timeout: Duration,
    /// How Kafka clients reach this agent, its zone, whether it is in cluster mode.
    pub member: rpc::Member,
    /// Random per process (see [`rpc::RegisterRequest::instance`]).
    pub instance: String,
    /// Bound of the partition index cache; 0: off.
    pub index_cache_bytes_max: u64,
}

#[derive(Default)]
struct Cache {
    by_name: HashMap<String, Arc<TopicMeta>>,
    by_id: HashMap<Uuid, Arc<TopicMeta>>,
    offsets: HashMap<(Uuid, i32), PartitionOffsets>,
    /// Last stable offsets: the largest the controller reported (it never decreases).
    stable: HashMap<(Uuid, i32), i64>,
}

struct Inner {
    settings: RemoteSettings,
    /// tonic's TLS settings from `settings.tls` (None: plaintext).
    tls: Option<ClientTlsConfig>,
    /// The last failed TLS handshake: (address, why). Start-up gives up once every configured
    /// address has refused one.
    tls_failure: Mutex<Option<(String, String)>>,
    /// The address calls go to now.
    current: Mutex<String>,
    channels: Mutex<HashMap<String, Channel>>,
    epoch: AtomicU64,
    /// The agent lease the controller granted (heartbeats go every third of it).
    lease_ms: AtomicU64,
    /// Serializes re-registrations, so concurrent fenced calls register once.
    registering: tokio::sync::Mutex<()>,
    cluster_id: Mutex<String>,
    cache: RwLock<Cache>,
    commits: watch::Sender<u64>,
    extents: ExtentCache,
    /// The controller's count of compaction swaps in the last snapshot (None: none taken yet).
    extents_replaced: Mutex<Option<u64>>,
    members: RwLock<Vec<LiveAgent>>,
    /// The controller's ACLs as last loaded, and the latest version it announced (snapshot or
    /// event): when the two differ the set is loaded again.
    acls: RwLock<Arc<AclSet>>,
    acls_announced: Mutex<Option<u64>>,
    /// Index lookups answered from `extents` / by the controller.
    lookups_cached: Arc<Counter>,
    lookups_remote: Arc<Counter>,
    /// The controller's client quotas as last loaded, and the latest version it announced
    /// (snapshot or event): when the two differ the set is loaded again.
    quotas: RwLock<Arc<QuotaSet>>,
    quotas_announced: Mutex<Option<u64>>,
}

/// A notification's extents, by partition (those that do not decode are left out).
fn by_partition(extents: Vec<rpc::Extent>) -> HashMap<(Uuid, i32), Vec<ExtentRecord>> {
    let mut out: HashMap<(Uuid, i32), Vec<ExtentRecord>> = HashMap::new();
    for e in extents.into_iter().filter_map(|e| rpc::extent_from(e).ok()) {
        out.entry((e.topic_id, e.partition)).or_default().push(e);
    }
    out
}

/// The gRPC controller client. Cheap to clone.
#[derive(Clone)]
pub struct Remote(Arc<Inner>);

impl Remote {
    /// Registers with the controller (waiting for one to answer up to `startup_deadline`),
    /// loads the snapshot, and starts the task that keeps the cache fresh until `shutdown`.
    pub async fn connect(
        settings: RemoteSettings,
        startup_deadline: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, ControllerError> {
        let first = settings
            .addresses
            .first()
            .cloned()
            .ok_or_else(|| ControllerError::InvalidRequest("[controller] addresses is empty: remote mode needs at least one".into()))?;
        let lookups = |source| {
            metrics::counter(
                "sidestream_index_lookups_total",
                "Partition index lookups (fetch, timestamp) of a remote-controller agent, by where they were answered.",
                &[("source", source)],
            )
        };
        let extents = ExtentCache::new(settings.index_cache_bytes_max);
        let remote = Remote(Arc::new(Inner {
            tls: settings.tls.client(),
            tls_failure: Mutex::new(None),
            settings,
            extents,
            extents_replaced: Mutex::new(None),
            members: RwLock::new(Vec::new()),
            acls: RwLock::new(Arc::new(AclSet::default())),
            acls_announced: Mutex::new(None),
            lookups_cached: lookups("cache"),
            lookups_remote: lookups("controller"),
            current: Mutex::new(first),
            channels: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            lease_ms: AtomicU64::new(3000),
            registering: tokio::sync::Mutex::new(()),
            cluster_id: Mutex::new(String::new()),
            cache: RwLock::new(Cache::default()),
            commits: watch::channel(0).0,
            quotas: RwLock::new(Arc::new(QuotaSet::default())),
            quotas_announced: Mutex::new(None),
        }));
        let deadline = Instant::now() + startup_deadline;
        // Addresses whose TLS handshake failed: a configuration error, not an outage, once every
        // configured address has refused one.
        let mut tls_failed: HashMap<String, String> = HashMap::new();
        loop {
            let attempt = async {
                remote.register(0).await?;
                remote.refresh().await
            };
            let e = match attempt.await {
                Ok(()) => break,
                Err(e) => e,
            };
            if let Some((addr, reason)) = remote.0.tls_failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                tls_failed.insert(addr, reason);
            }
            let all_refused_tls = remote.0.settings.addresses.iter().all(|a| tls_failed.contains_key(a));
            if all_refused_tls || !matches!(e, ControllerError::Unavailable(_)) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                let addresses = remote.0.settings.addresses.join(", ");
                let e = format!("no controller answered at {addresses} within {startup_deadline:?}; the last failure: {e}");
                return Err(ControllerError::Unavailable(e));
            }
            tracing::warn!(error = %e, "controller not reachable yet; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let weak = Arc::downgrade(&remote.0);
        metrics::gauges("sidestream_index_cache_bytes", "Estimated memory of the cached partition index.", move || {
            weak.upgrade().map(|r| vec![(Vec::new(), r.extents.bytes() as i64)]).unwrap_or_default()
        });
        tokio::spawn(remote.clone().run(shutdown));
        Ok(remote)
    }

    /// A client of the current address; an address that cannot be dialled (e.g. a standby's
    /// hint that is no name a certificate can carry) answers as an unreachable controller.
    fn client(&self) -> Result<GrpcClient<Channel>, Status> {
        let addr = self.current();
        let mut channels = self.0.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let c = self.dial(&addr).map_err(Status::unavailable)?;
                channels.insert(addr, c.clone());
                c
            }
        };
        Ok(GrpcClient::new(channel)
            .max_decoding_message_size(rpc::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(rpc::MESSAGE_BYTES_MAX))
    }

    /// A channel to `addr` (connected on first use): over TLS when a CA is set, verifying the
    /// certificate for `addr`'s host.
    fn dial(&self, addr: &str) -> Result<Channel, String> {
        let uri = tls::endpoint_uri(addr, self.0.tls.is_some());
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("cannot dial {addr:?}: {e}"))?
            .connect_timeout(self.0.settings.connect_timeout)
            .tcp_nodelay(true);
        if let Some(config) = &self.0.tls {
            endpoint = endpoint
                .tls_config(config.clone())
                .map_err(|e| format!("cannot dial {addr:?} over TLS: {}", rpc::error_chain(&e)))?;
        }
        Ok(endpoint.connect_lazy())
    }

    fn current(&self) -> String {
        self.0.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A failed call's error (before [`Self::switch_after`] moves on from the address): a failed
    /// TLS handshake is named, with the address and the keys to check.
    fn error_of(&self, s: &Status) -> ControllerError {
        let Some(reason) = self.0.tls.as_ref().and_then(|_| tls::handshake_failure(s)) else { return rpc::error_from_status(s) };
        let addr = self.current();
        let e = ControllerError::Unavailable(format!(
            "TLS handshake with the controller at {addr} failed: {reason} (check [controller] tls_ca_file, tls_cert_file and tls_key_file here and on the controller)"
        ));
        *self.0.tls_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((addr, reason));
        e
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = &self.0.settings.token
            && let Ok(v) = t.parse()
        {
            req.metadata_mut().insert(rpc::TOKEN_HEADER, v);
        }
        req
    }

    /// After a failed call: follow the standby's hint, or move to the next address.
    fn switch_after(&self, s: &Status) {
        let mut current = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(active) = s.metadata().get(rpc::ACTIVE_HEADER).and_then(|v| v.to_str().ok()) {
            if *current != active {
                tracing::info!(from = %*current, to = active, "following the active controller");
                *current = active.to_string();
            }
            return;
        }
        let addrs = &self.0.settings.addresses;
        let i = addrs.iter().position(|a| *a == *current).map_or(0, |i| (i + 1) % addrs.len());
        *current = addrs[i].clone();
    }

    /// One call with retries: `f(client, epoch)`. Fenced answers re-register first.
    async fn rpc_call<T, F, Fut>(&self, f: F) -> Result<T, ControllerError>
    where
        F: Fn(GrpcClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.0.settings.call_deadline;
        let mut backoff = RETRY_BACKOFF_MIN_MS;
        loop {
            let epoch = self.0.epoch.load(Ordering::Acquire);
            let result = match self.client() {
                Ok(client) => f(client, epoch).await,
                Err(s) => Err(s),
            };
            let status = match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            let error = if status.code() == Code::FailedPrecondition {
                tracing::warn!(epoch, reason = status.message(), "fenced by the controller: registering again");
                match self.register(epoch).await {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            } else if status.code() == Code::Unauthenticated {
                return Err(ControllerError::Unavailable(format!("controller refused the token: {}", status.message())));
            } else {
                let e = self.error_of(&status);
                if !matches!(e, ControllerError::Unavailable(_)) {
                    return Err(e);
                }
                self.switch_after(&status);
                e
            };
            if Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX_MS);
        }
    }

    /// Registers for a new epoch unless another task already replaced `seen`.
    async fn register(&self, seen: u64) -> Result<(), ControllerError> {
        let _one = self.0.registering.lock().await;
        if self.0.epoch.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let msg = rpc::RegisterRequest {
            agent: self.0.settings.agent.clone(),
            member: Some(self.0.settings.member.clone()),
            instance: self.0.settings.instance.clone(),
        };
        let failed = |s: Status| {
            let e = self.error_of(&s);
            self.switch_after(&s);
            e
        };
        let reply = self.client().map_err(failed)?.register(self.request(msg)).await.map_err(failed)?;
        let reply = reply.into_inner();
        {
            let mut id = self.0.cluster_id.lock().unwrap_or_else(|p| p.into_inner());
            if !id.is_empty() && *id != reply.cluster_id {
                // Another cluster (another store) behind the same address: nothing cached holds.
                self.0.extents.clear();
            }
            *id = reply.cluster_id;
        }
        self.0.lease_ms.store(reply.lease_ms, Ordering::Relaxed);
        self.set_members(reply.members);
        self.0.epoch.store(reply.epoch, Ordering::Release);
        tracing::info!(epoch = reply.epoch, lease_ms = reply.lease_ms, "registered with the controller");
        Ok(())
    }

    /// Replaces the cache with a fresh snapshot.
    async fn refresh(&self) -> Result<(), ControllerError> {
        let snap = self.rpc_call(|mut c, _| async move { c.snapshot(self.request(rpc::Empty {})).await }).await?;
        let mut cache = Cache::default();
        for t in snap.topics {
            let t = Arc::new(rpc::topic_from(t)?);
            cache.by_name.insert(t.name.clone(), t.clone());
            cache.by_id.insert(t.id, t);
        }
        let (old, old_stable) = {
            let c = self.0.cache.read().unwrap_or_else(|p| p.into_inner());
            (c.offsets.clone(), c.stable.clone())
        };
        for p in snap.partitions {
            let id = rpc::uuid(&p.topic_id)?;
            let mut o = PartitionOffsets { log_start_offset: p.log_start_offset, next_offset: p.next_offset };
            // Never move a high watermark back (an older answer racing a newer event).
            if let Some(prev) = old.get(&(id, p.partition)) {
                o.next_offset = o.next_offset.max(prev.next_offset);
                o.log_start_offset = o.log_start_offset.max(prev.log_start_offset);
            }
            let lso = p.last_stable_offset.unwrap_or(p.next_offset).max(old_stable.get(&(id, p.partition)).copied().unwrap_or(0));
            cache.stable.insert((id, p.partition), lso);
            cache.offsets.insert((id, p.partition), o);
            self.0.extents.trim_below(id, p.partition, p.log_start_offset);
            self.0.extents.check_end(id, p.partition, p.next_offset);
        }
        self.0.extents.retain_topics(|id| cache.by_id.contains_key(&id));
        {
            // Swaps since the last snapshot may have been missed (lagged or reconnected): the
            // cached extents may point at replaced objects, soon deleted.
            let mut seen = self.0.extents_replaced.lock().unwrap_or_else(|p| p.into_inner());
            if seen.is_some_and(|n| n != snap.extents_replaced) {
                self.0.extents.clear();
            }
            *seen = Some(snap.extents_replaced);
        }
        if let Some(version) = snap.quotas_version {
            self.announce_quotas(version);
            self.sync_quotas().await?;
        }
        *self.0.cache.write().unwrap_or_else(|p| p.into_inner()) = cache;
        self.0.commits.send_modify(|n| *n += 1);
        if let Some(version) = snap.acls_version {
            self.announce_acls(version);
            self.sync_acls().await?;
        }
        Ok(())
    }

    /// The controller announced ACLs of `version`.
    fn announce_acls(&self, version: u64) {
        *self.0.acls_announced.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }

    /// Loads the ACLs if the controller announced a version other than the one held.
    async fn sync_acls(&self) -> Result<(), ControllerError> {
        let announced = *self.0.acls_announced.lock().unwrap_or_else(|p| p.into_inner());
        if announced.is_none_or(|v| v == self.acls().version) {
            return Ok(());
        }
        self.load_acls().await
    }

    /// Loads the controller's ACLs (after a change this agent made, or one it was told of).
    async fn load_acls(&self) -> Result<(), ControllerError> {
        let set = match self.send(&Call::AllAcls {}).await? {
            Reply::AllAcls(r) => r?,
            other => return Err(ControllerError::InvalidRequest(format!("the controller answered {} to all_acls", other.name()))),
        };
        tracing::debug!(version = set.version, count = set.bindings.len(), "ACLs loaded from the controller");
        *self.0.acls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// A `Watch` event: the controller's high watermark and last stable offset.
    fn advance(&self, p: &rpc::Partition) {
        let Ok(id) = rpc::uuid(&p.topic_id) else { return };
        let mut cache = self.0.cache.write().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = cache.offsets.get_mut(&(id, p.partition)) {
            o.next_offset = o.next_offset.max(p.next_offset);
            // Retention and DeleteRecords move it; it never moves back either.
            o.log_start_offset = o.log_start_offset.max(p.log_start_offset);
            let lso = p.last_stable_offset.unwrap_or(p.next_offset);
            let s = cache.stable.entry((id, p.partition)).or_insert(0);
            *s = (*s).max(lso);
        }
    }

    /// This agent's own commit of `count` offsets at `base`. The LSO follows only when nothing
    /// this cache has not seen lies before `base`, no transaction is open (LSO at the high
    /// watermark) and the batch is not transactional; otherwise the controller's event moves it.
    fn advance_own(&self, topic_id: Uuid, partition: i32, base: i64, count: i64, transactional: bool) {
        let mut cache = self.0.cache.write().unwrap_or_else(|p| p.into_inner());
        let Some(o) = cache.offsets.get_mut(&(topic_id, partition)) else { return };
        let old_hw = o.next_offset;
        o.next_offset = old_hw.max(base + count);
        let s = cache.stable.entry((topic_id, partition)).or_insert(0);
        if !transactional && base == old_hw && *s == old_hw {
            *s = base + count;
        }
    }

    fn set_members(&self, members: Vec<rpc::Member>) {
        let live = members
            .into_iter()
            .map(|m| LiveAgent {
                node_id: m.node_id,
                host: m.host,
                port: m.port,
                zone: m.zone,
                listeners: m.listeners.into_iter().map(|l| ListenerAddress { name: l.name, host: l.host, port: l.port }).collect(),
            })
            .collect();
        *self.0.members.write().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// A commit notification's extents into the index cache (before the high watermarks move,
    /// so a fetch woken by them finds the extents).
    fn cache_appended(&self, extents: Vec<rpc::Extent>) {
        for ((t, p), found) in by_partition(extents) {
            self.0.extents.insert(t, p, &found, false);
        }
    }

    /// A compaction swap's new extents into the index cache, in place of those they cover.
    fn cache_replaced(&self, extents: Vec<rpc::Extent>) {
        for ((t, p), new) in by_partition(extents) {
            self.0.extents.replace(t, p, &new);
        }
    }

    /// Puts a controller's answer (to a lookup asked at cache `generation`) into the index
    /// cache, unless its topic is gone or a swap came meanwhile.
    fn cache_found(&self, generation: u64, topic_id: Uuid, partition: i32, found: &[ExtentRecord]) {
        if self.topic(TopicRef::Id(topic_id)).is_some() {
            self.0.extents.insert_found(generation, topic_id, partition, found);
        }
    }

    /// A topic this agent created, grew or changed the configs of. A topic's partitions never
    /// go: a copy with fewer than the cached one (an answer overtaken by a snapshot) keeps the
    /// cached count; its configs, the controller's answer to this agent's own change, are taken.
    fn insert_topic(&self, t: Arc<TopicMeta>) {
        let mut cache = self.0.cache.write().unwrap_or_else(|p| p.into_inner());
        let t = match cache.by_id.get(&t.id) {
            Some(known) if known.partitions > t.partitions => Arc::new(TopicMeta { partitions: known.partitions, ..(*t).clone() }),
            _ => t,
        };
        for p in 0..t.partitions {
            cache.offsets.entry((t.id, p)).or_insert(PartitionOffsets { log_start_offset: 0, next_offset: 0 });
            cache.stable.entry((t.id, p)).or_insert(0);
        }
        cache.by_name.insert(t.name.clone(), t.clone());
        cache.by_id.insert(t.id, t);
    }

    /// Keeps the cache fresh: the watch stream, heartbeats, reconnection.
    async fn run(self, shutdown: CancellationToken) {
        self.run_until(&shutdown).await
    }

    async fn run_until(&self, shutdown: &CancellationToken) {
        let mut backoff = RETRY_BACKOFF_MIN_MS;
        while !shutdown.is_cancelled() {
            let stream = match self.client() {
                Ok(mut client) => client.watch(self.request(rpc::Empty {})).await,
                Err(s) => Err(s),
            };
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    self.switch_after(&s);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX_MS);
                    continue;
                }
            };
            // Subscribed: anything committed before now is in the snapshot.
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "controller snapshot failed");
                continue;
            }
            backoff = RETRY_BACKOFF_MIN_MS;
            let mut heartbeat = tokio::time::interval(self.heartbeat_period());
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = heartbeat.tick() => {
                        // A quota load that failed after an event is retried here.
                        if let Err(e) = self.sync_quotas().await {
                            tracing::warn!(error = %e, "loading the client quotas from the controller failed");
                        }
                        let beat = self.rpc_call(|mut c, epoch| {
                            let agent = self.0.settings.agent.clone();
                            async move { c.heartbeat(self.request(rpc::HeartbeatRequest { agent, epoch })).await }
                        });
                        match beat.await {
                            Ok(reply) => self.set_members(reply.members),
                            Err(e) => tracing::warn!(error = %e, "controller heartbeat failed"),
                        }
                        // An ACL load that failed after an event is retried here.
                        if let Err(e) = self.sync_acls().await {
                            tracing::warn!(error = %e, "loading the ACLs from the controller failed");
                        }
                    }
                    event = stream.message() => match event {
                        Ok(Some(event)) if event.resync => {
                            if let Err(e) = self.refresh().await {
                                tracing::warn!(error = %e, "controller snapshot failed");
                                break;
                            }
                        }
                        Ok(Some(event)) if event.acls_version.is_some() => {
                            self.announce_acls(event.acls_version.unwrap_or_default());
                            if let Err(e) = self.sync_acls().await {
                                tracing::warn!(error = %e, "loading the ACLs from the controller failed");
                            }
                        }
                        Ok(Some(event)) => {
                            self.cache_replaced(event.replaced);
                            self.cache_appended(event.extents);
                            for p in &event.partitions {
                                if let Ok(id) = rpc::uuid(&p.topic_id) {
                                    self.0.extents.trim_below(id, p.partition, p.log_start_offset);
                                }
                                self.advance(p);
                            }
                            self.0.commits.send_modify(|n| *n += 1);
                            if let Some(version) = event.quotas_version {
                                self.announce_quotas(version);
                                if let Err(e) = self.sync_quotas().await {
                                    tracing::warn!(error = %e, "loading the client quotas from the controller failed");
                                }
                            }
                        }
                        Ok(None) | Err(_) => {
                            tracing::warn!("controller commit stream ended; reconnecting");
                            self.switch_after(&Status::unavailable("stream ended"));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// The controller announced client quotas of `version`.
    fn announce_quotas(&self, version: u64) {
        *self.0.quotas_announced.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }

    /// Loads the client quotas if the controller announced a version other than the one held.
    async fn sync_quotas(&self) -> Result<(), ControllerError> {
        let announced = *self.0.quotas_announced.lock().unwrap_or_else(|p| p.into_inner());
        if announced.is_none_or(|v| v == self.client_quotas().version) {
            return Ok(());
        }
        let set = match self.send(&Call::AllClientQuotas {}).await? {
            Reply::AllClientQuotas(r) => r?,
            other => {
                return Err(ControllerError::InvalidRequest(format!("the controller answered {} to all_client_quotas", other.name())));
            }
        };
        tracing::debug!(version = set.version, entities = set.entries.len(), "client quotas loaded from the controller");
        *self.0.quotas.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    fn heartbeat_period(&self) -> Duration {
        Duration::from_millis((self.0.lease_ms.load(Ordering::Relaxed) / 3).max(10))
    }
}

#[async_trait]
impl ControllerClient for Remote {
    fn cluster_id(&self) -> String {
        self.0.cluster_id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>> {
        let cache = self.0.cache.read().unwrap_or_else(|p| p.into_inner());
        match r {
            TopicRef::Name(n) => cache.by_name.get(n).cloned(),
            TopicRef::Id(id) => cache.by_id.get(&id).cloned(),
        }
    }
    fn topics(&self) -> Vec<Arc<TopicMeta>> {
        let mut v: Vec<_> = self.0.cache.read().unwrap_or_else(|p| p.into_inner()).by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError> {
        self.0
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .offsets
            .get(&(topic_id, partition))
            .copied()
            .ok_or(ControllerError::UnknownTopicOrPartition)
    }
    fn commit_watch(&self) -> watch::Receiver<u64> {
        self.0.commits.subscribe()
    }
    fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError> {
        let cache = self.0.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.stable.get(&(topic_id, partition)).copied().ok_or(ControllerError::UnknownTopicOrPartition)
    }
    fn live_agents(&self) -> Vec<LiveAgent> {
        self.0.members.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn acls(&self) -> Arc<AclSet> {
        self.0.acls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn call(&self, call: Call) -> Reply {
        let lookup = matches!(call, Call::FindExtents { .. } | Call::ExtentForTimestamp { .. } | Call::ExtentWithMaxTimestamp { .. });
        if lookup {
            if let Some(reply) = self.answer_from_index_cache(&call) {
                self.0.lookups_cached.inc();
                return reply;
            }
            self.0.lookups_remote.inc();
        }
        let generation = self.0.extents.generation();
        match self.send(&call).await {
            Ok(reply) => {
                self.learn(&call, &reply, generation);
                // This agent's own ACL change holds from its answer on (reads its own writes).
                if matches!(reply, Reply::CreateAcls(Ok(_)) | Reply::DeleteAcls(Ok(_)))
                    && let Err(e) = self.load_acls().await
                {
                    tracing::warn!(error = %e, "loading the ACLs from the controller failed");
                }
                reply
            }
            Err(e) => call.failed(e),
        }
    }

    fn client_quotas(&self) -> Arc<QuotaSet> {
        self.0.quotas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Remote {
    /// An index lookup the cache can answer (given the partition's offsets as this agent knows
    /// them): what the controller would have answered.
    fn answer_from_index_cache(&self, call: &Call) -> Option<Reply> {
        let c = &self.0.extents;
        match *call {
            Call::FindExtents { topic_id, partition, from_offset, max_bytes } => {
                let o = self.offsets(topic_id, partition).ok()?;
                c.find(topic_id, partition, from_offset, max_bytes, o.next_offset).map(|found| Reply::FindExtents(Ok(found)))
            }
            Call::ExtentForTimestamp { topic_id, partition, timestamp } => {
                let o = self.offsets(topic_id, partition).ok()?;
                c.for_timestamp(topic_id, partition, timestamp, o.log_start_offset, o.next_offset)
                    .map(|e| Reply::ExtentForTimestamp(Ok(e)))
            }
            Call::ExtentWithMaxTimestamp { topic_id, partition } => {
                let o = self.offsets(topic_id, partition).ok()?;
                c.with_max_timestamp(topic_id, partition, o.log_start_offset, o.next_offset)
                    .map(|e| Reply::ExtentWithMaxTimestamp(Ok(e)))
            }
            _ => None,
        }
    }

    /// What this agent's caches learn from a reply: its own topic changes and commits (so it
    /// reads its own writes) and the extents the controller found.
    fn learn(&self, call: &Call, reply: &Reply, generation: u64) {
        match (call, reply) {
            (Call::CreateTopic { req }, Reply::CreateTopic(Ok(t))) if !req.validate_only => self.insert_topic(t.clone()),
            (Call::CreateInternalTopic { .. }, Reply::CreateInternalTopic(Ok(t))) => self.insert_topic(t.clone()),
            (Call::CreatePartitions { req }, Reply::CreatePartitions(Ok(t))) if !req.validate_only => self.insert_topic(t.clone()),
            (Call::DeleteTopic { .. }, Reply::DeleteTopic(Ok(t))) => {
                let mut cache = self.0.cache.write().unwrap_or_else(|p| p.into_inner());
                cache.by_name.remove(&t.name);
                cache.by_id.remove(&t.id);
                cache.offsets.retain(|(id, _), _| *id != t.id);
                cache.stable.retain(|(id, _), _| *id != t.id);
                drop(cache);
                self.0.extents.retain_topics(|id| id != t.id);
            }
            (Call::AlterTopicConfigs { validate_only: false, .. }, Reply::AlterTopicConfigs(Ok(results))) => {
                results.iter().flatten().for_each(|t| self.insert_topic(t.clone()))
            }
            (Call::CommitObject { req }, Reply::CommitObject(Ok(results))) => {
                let mut advanced = false;
                for (e, r) in req.extents.iter().zip(results) {
                    if let Ok(base) = r {
                        let transactional = e.producer.is_some_and(|p| p.transactional);
                        self.advance_own(e.topic_id, e.partition, *base, e.offset_count, transactional);
                        advanced = true;
                    }
                }
                if advanced {
                    self.0.commits.send_modify(|n| *n += 1);
                }
            }
            (Call::FindExtents { topic_id, partition, .. }, Reply::FindExtents(Ok(found))) => {
                self.cache_found(generation, *topic_id, *partition, found)
            }
            (Call::ExtentForTimestamp { topic_id, partition, .. }, Reply::ExtentForTimestamp(Ok(found)))
            | (Call::ExtentWithMaxTimestamp { topic_id, partition }, Reply::ExtentWithMaxTimestamp(Ok(found))) => {
                self.cache_found(generation, *topic_id, *partition, found.as_slice())
            }
            // One partition's extents, or each partition's of a partition-sorted object.
            (Call::ReplaceExtents { req, .. }, Reply::ReplaceExtents(Ok(()))) => {
                for new in req.new.chunk_by(|a, b| (a.topic_id, a.partition) == (b.topic_id, b.partition)) {
                    self.0.extents.replace(new[0].topic_id, new[0].partition, new);
                }
            }
            _ => {}
        }
    }

    /// One call to the active controller. Calls that wait for a rebalance (and heartbeats) are
    /// sent once with a deadline of that wait; the others retry like every call, for up to
    /// `call_deadline`, also when the controller answers "unavailable" (they are idempotent,
    /// or answer a repeat as Kafka's coordinator does).
    async fn send(&self, call: &Call) -> Result<Reply, ControllerError> {
        let body = calls::encode(call)?;
        let envelope =
            |epoch| rpc::CallRequest { version: calls::WIRE_VERSION, agent: self.0.settings.agent.clone(), epoch, body: body.clone() };
        if let Some(wait_ms) = call.wait_ms() {
            let deadline = Duration::from_millis(u64::try_from(wait_ms + calls::WAIT_SLACK_MS).unwrap_or(0));
            let epoch = self.0.epoch.load(Ordering::Acquire);
            let call = async {
                match self.client() {
                    Ok(mut client) => client.call(self.request(envelope(epoch))).await,
                    Err(s) => Err(s),
                }
            };
            let reply = match tokio::time::timeout(deadline, call).await {
                Err(_) => return Err(ControllerError::Unavailable(format!("the controller did not answer within {deadline:?}"))),
                Ok(Err(s)) => {
                    let e = self.error_of(&s);
                    if matches!(e, ControllerError::Unavailable(_)) {
                        self.switch_after(&s);
                    }
                    return Err(e);
                }
                Ok(Ok(r)) => r.into_inner(),
            };
            return calls::decode(&reply.body);
        }
        let deadline = Instant::now() + self.0.settings.call_deadline;
        let mut backoff = RETRY_BACKOFF_MIN_MS;
        loop {
            let reply = self.rpc_call(|mut c, epoch| {
                let msg = envelope(epoch);
                async move { c.call(self.request(msg)).await }
            });
            let reply: Reply = calls::decode(&reply.await?.body)?;
            if !reply.retriable() || Instant::now() >= deadline {
                return Ok(reply);
            }
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX_MS);
        }
    }
}

/// A real `sidestream controller` service (SQLite in a temp dir) and a [`Remote`] agent
/// client: topics, commits, groups and transactions through gRPC give the embedded answers.
#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use tokio_util::sync::CancellationToken;

    use super::{Remote, RemoteSettings};
    use crate::agent::client::ControllerClient;
    use crate::api::groups::{ClientInfo, CommitOffset, GroupError, JoinRequest, OffsetCommitRequest, SyncRequest};
    use crate::api::tls::TlsFiles;
    use crate::api::tls::testing::openssl_files;
    use crate::api::txn::{TxnInit, TxnStatus};
    use crate::api::{CommitRequest, ControllerError, CreateTopic, ExtentRecord, ReplaceExtents};
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::config::{GroupsConfig, StoreUrl, TopicsConfig};
    use crate::controller::service::{self, ServiceSettings};
    use crate::format::object::{ExtentInfo, ProducerBatch};

    fn service_settings(dir: &Path) -> ServiceSettings {
        ServiceSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertised: String::new(),
            store: StoreUrl::Sqlite(dir.join("controller.db")),
            store_settings: crate::controller::store::StoreSettings::default(),
            token: None,
            tls: Default::default(),
            failover_ms: 5000,
            agent_lease_ms: 10_000,
            topics: TopicsConfig::default(),
            groups: GroupsConfig { initial_rebalance_delay_ms: 0, ..GroupsConfig::default() },
            producer_id_expiration_ms: 86_400_000,
            transactional_id_expiration_ms: 604_800_000,
            // Short: a controller grants no job for one lease length after it becomes active.
            job_lease_ms: 200,
            object_commit_window_ms: 86_400_000,
        }
    }

    async fn start() -> (tempfile::TempDir, service::RunningService, Arc<dyn ControllerClient>, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        let settings = service_settings(dir.path());
        let svc = service::start(settings, Arc::new(SystemClock), Arc::new(SeededEntropy::new(1))).await.unwrap();
        let stop = CancellationToken::new();
        let remote = connect(&svc, 1, stop.clone()).await;
        (dir, svc, remote, stop)
    }

    /// Agent `agent-<node_id>` of the controller at `addr`.
    fn remote_settings(addr: String, node_id: i32, tls: TlsFiles) -> RemoteSettings {
        RemoteSettings {
            addresses: vec![addr],
            token: None,
            tls,
            agent: format!("agent-{node_id}"),
            call_deadline: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            member: crate::api::rpc::Member {
                node_id,
                host: "127.0.0.1".into(),
                port: 9092,
                zone: None,
                cluster_mode: false,
                listeners: Vec::new(),
            },
            instance: format!("test-instance-{node_id}"),
            index_cache_bytes_max: 1 << 20,
        }
    }

    /// Agent `agent-<node_id>` of the service.
    async fn connect(svc: &service::RunningService, node_id: i32, stop: CancellationToken) -> Arc<dyn ControllerClient> {
        let settings = remote_settings(svc.local_addr.to_string(), node_id, TlsFiles::default());
        Arc::new(Remote::connect(settings, Duration::from_secs(10), stop).await.unwrap())
    }

    /// TLS and mTLS with the controller (certificates made with openssl; the controller's
    /// carries IP 127.0.0.1 only). The right CA and a client certificate work; a CA that did not
    /// sign the controller's certificate, no client certificate, or a host the certificate does
    /// not name fail at once, with the handshake's reason; plaintext gets no answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_and_mtls_with_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
        for d in [&ours, &theirs] {
            std::fs::create_dir_all(d).unwrap();
            if openssl_files(d).is_none() {
                eprintln!("openssl not available: skipped");
                return;
            }
        }
        let files = |d: &Path, identity: Option<&str>, ca: bool| {
            let pem = |ext: &str| identity.map(|name| d.join(format!("{name}.{ext}")));
            TlsFiles::load(pem("pem").as_deref(), pem("key").as_deref(), ca.then(|| d.join("ca.pem")).as_deref()).unwrap()
        };
        let mut settings = service_settings(dir.path());
        settings.tls = files(&ours, Some("server"), true);
        let svc = service::start(settings, Arc::new(SystemClock), Arc::new(SeededEntropy::new(1))).await.unwrap();
        let (stop, port) = (CancellationToken::new(), svc.local_addr.port());
        let ip = format!("127.0.0.1:{port}");
        let agent =
            |addr: &str, tls: TlsFiles| Remote::connect(remote_settings(addr.to_string(), 1, tls), Duration::from_secs(3), stop.clone());

        let remote: Arc<dyn ControllerClient> = Arc::new(agent(&ip, files(&ours, Some("client"), true)).await.unwrap());
        let req =
            CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs: Default::default(), validate_only: false };
        remote.create_topic(req).await.unwrap();

        let started = std::time::Instant::now();
        let e = agent(&ip, files(&theirs, Some("client"), true)).await.err().unwrap().to_string();
        assert!(e.contains("TLS handshake with the controller at 127.0.0.1") && e.contains("invalid peer certificate"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2), "a refused handshake is not retried until the deadline");
        let e = agent(&ip, files(&ours, None, true)).await.err().unwrap().to_string();
        assert!(e.contains("TLS handshake") && e.contains("CertificateRequired"), "{e}");
        let e = agent(&format!("localhost:{port}"), files(&ours, Some("client"), true)).await.err().unwrap().to_string();
        assert!(e.contains("TLS handshake") && e.contains("not valid for name \"localhost\""), "{e}");
        let e = agent(&ip, TlsFiles::default()).await.err().unwrap();
        assert!(matches!(e, ControllerError::Unavailable(_)), "{e}");
        stop.cancel();
        svc.shutdown().await;
    }

    /// A compaction swap made through one agent reaches the other's index cache: its lookups
    /// answer the new extents, never the replaced ones (whose objects will be deleted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_swap_reaches_the_other_agents_index_cache() {
        let (_dir, svc, remote, stop) = start().await;
        let other = connect(&svc, 2, stop.clone()).await;
        let req =
            CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs: Default::default(), validate_only: false };
        let topic = remote.create_topic(req).await.unwrap().id;
        for key in ["00/agent-1/a.sso", "00/agent-1/b.sso"] {
            let info = ExtentInfo {
                topic_id: topic,
                partition: 0,
                position: 0,
                length: 50,
                batch_count: 1,
                offset_count: 2,
                max_timestamp: 1,
                producer: None,
            };
            let req = CommitRequest {
                object_key: key.into(),
                object_size_bytes: 50,
                agent: "agent-1".into(),
                extents: vec![info],
                wal: None,
                txn_end: None,
            };
            remote.commit_object(req).await.unwrap();
        }
        until("the other agent's high watermark", || other.offsets(topic, 0).map(|o| o.next_offset) == Ok(4)).await;
        let old = other.find_extents(topic, 0, 0, u64::MAX).await.unwrap();
        assert_eq!(old.len(), 2);
        let new = ExtentRecord {
            object_key: Arc::from("00/agent-1/x.p.sso"),
            end_offset: 4,
            length: 100,
            batch_count: 2,
            object_size: 100,
            ..old[0].clone()
        };
        let swap = ReplaceExtents {
            object_key: "00/agent-1/x.p.sso".into(),
            object_size_bytes: 100,
            agent: "agent-1".into(),
            topic_id: topic,
            partition: 0,
            old,
            new: vec![new.clone()],
        };
        // The service grants no job lease for one lease length after it became active.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let lease = loop {
            if let Some(l) = remote.acquire_job_lease(crate::api::jobs::JOB_COMPACTION.into(), "test".into()).await.unwrap() {
                break l;
            }
            assert!(std::time::Instant::now() < deadline, "no compaction lease within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        remote.replace_extents(lease, swap).await.unwrap();
        assert_eq!(remote.find_extents(topic, 0, 0, u64::MAX).await.unwrap(), vec![new.clone()]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while other.find_extents(topic, 0, 0, u64::MAX).await.unwrap() != vec![new.clone()] {
            assert!(tokio::time::Instant::now() < deadline, "the swap never reached the other agent");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(other.find_extents(topic, 0, 1, 10).await.unwrap(), vec![new]);
        stop.cancel();
        svc.shutdown().await;
    }

    /// An ACL change made through one agent holds there at once and reaches the other agent
    /// within a second or two (the `Watch` event announces the new version).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acl_changes_reach_every_agent() {
        use crate::api::acl::{AclBinding, AclFilter, AclOperation, AclPermission, PatternType, ResourceType};
        let (_dir, svc, remote, stop) = start().await;
        let other = connect(&svc, 2, stop.clone()).await;
        assert!(remote.acls().bindings.is_empty() && other.acls().bindings.is_empty());
        let read = AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: "t".into(),
            pattern_type: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        assert_eq!(remote.create_acls(vec![read.clone()]).await.unwrap(), vec![Ok(())]);
        assert_eq!(remote.acls().bindings, vec![read.clone()], "the agent's own change, at once");
        let t0 = std::time::Instant::now();
        until("the other agent's ACLs", || other.acls().bindings == vec![read.clone()]).await;
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        assert_eq!(other.describe_acls(AclFilter::any()).await.unwrap(), vec![read.clone()]);

        let deleted = other.delete_acls(vec![AclFilter { principal: Some("User:alice".into()), ..AclFilter::any() }]).await.unwrap();
        assert_eq!(deleted, vec![Ok(vec![read])]);
        assert!(other.acls().bindings.is_empty());
        until("the first agent's ACLs", || remote.acls().bindings.is_empty()).await;
        stop.cancel();
        svc.shutdown().await;
    }

    async fn until<F: Fn() -> bool>(what: &str, f: F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_and_a_transaction_through_grpc() {
        let (_dir, svc, remote, stop) = start().await;
        let topic = remote
            .create_topic(CreateTopic {
                name: "t".into(),
                partitions: 2,
                replication_factor: -1,
                configs: Default::default(),
                validate_only: false,
            })
            .await
            .unwrap();

        // A one-member classic group: join, sync, heartbeat, commit, fetch, list, leave.
        let join = JoinRequest {
            group_id: "g".into(),
            member_id: String::new(),
            group_instance_id: None,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"\x00meta"))],
            require_known_member_id: false,
            client: ClientInfo { client_id: "c".into(), client_host: "/127.0.0.1".into() },
        };
        let joined = remote.join_group(join).await;
        assert_eq!(joined.error, None, "{joined:?}");
        assert_eq!(joined.leader, joined.member_id);
        assert_eq!(joined.members[0].metadata, Bytes::from_static(b"\x00meta"));
        let (member, generation) = (joined.member_id.clone(), joined.generation_id);
        let synced = remote
            .sync_group(SyncRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member.clone(),
                group_instance_id: None,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignments: vec![(member.clone(), Bytes::from_static(b"\xffassigned"))],
            })
            .await
            .unwrap();
        assert_eq!(synced.assignment, Bytes::from_static(b"\xffassigned"));
        remote.heartbeat("g".into(), member.clone(), None, generation).await.unwrap();
        assert_eq!(remote.heartbeat("g".into(), member.clone(), None, generation + 1).await, Err(GroupError::IllegalGeneration));
        let offsets = vec![CommitOffset { topic: "t".into(), partition: 1, offset: 42, leader_epoch: -1, metadata: "m".into() }];
        let committed = remote
            .commit_offsets(OffsetCommitRequest {
                group_id: "g".into(),
                generation_id_or_member_epoch: generation,
                member_id: member.clone(),
                group_instance_id: None,
                api_version: 8,
                offsets,
            })
            .await
            .unwrap();
        assert_eq!(committed, vec![Ok(())]);
        let fetched = remote.fetch_offsets("g".into(), None, None).await.unwrap();
        assert_eq!(fetched.len(), 1);
        assert_eq!((fetched[0].0.clone(), fetched[0].1.as_ref().map(|c| c.offset)), (("t".into(), 1), Some(42)));
        let listed = remote.list_groups(Vec::new(), Vec::new()).await.unwrap();
        assert_eq!(listed.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(), vec!["g"]);
        assert_eq!(remote.describe_group("g".into()).await.unwrap().members.len(), 1);
        assert_eq!(remote.leave_group("g".into(), vec![(member.clone(), None)]).await.unwrap(), vec![Ok(())]);
        assert_eq!(remote.heartbeat("g".into(), member, None, generation).await, Err(GroupError::UnknownMemberId));

        // A transaction: its open data holds the LSO back until the markers are committed.
        let TxnInit::Ready { producer_id, epoch } = remote.init_transactional_producer("tx".into(), 60_000, (-1, -1)).await.unwrap() else {
            panic!("not ready")
        };
        let added = remote.add_partitions_to_txn("tx".into(), producer_id, epoch, vec![("t".into(), 0)], false, None).await.unwrap();
        assert_eq!(added, vec![Ok(())]);
        let extent = |n: i64, producer: Option<ProducerBatch>| ExtentInfo {
            topic_id: topic.id,
            partition: 0,
            position: 0,
            length: 10,
            batch_count: 1,
            offset_count: n,
            max_timestamp: 0,
            producer,
        };
        let commit = |key: &str, extents, txn_end| CommitRequest {
            object_key: key.into(),
            object_size_bytes: 100,
            agent: "agent-1".into(),
            extents,
            wal: None,
            txn_end,
        };
        remote.commit_object(commit("plain", vec![extent(2, None)], None)).await.unwrap();
        assert_eq!(remote.last_stable_offset(topic.id, 0), Ok(2), "own commit, nothing open: LSO follows");
        let batch = ProducerBatch { producer_id, epoch, first_sequence: 0, last_sequence: 2, transactional: true };
        assert_eq!(remote.commit_object(commit("data", vec![extent(3, Some(batch))], None)).await.unwrap(), vec![Ok(2)]);
        remote.commit_object(commit("after", vec![extent(1, None)], None)).await.unwrap();
        assert_eq!(remote.offsets(topic.id, 0).unwrap().next_offset, 6);
        let described = remote.describe_transaction("tx".into()).await.unwrap().unwrap();
        assert_eq!((described.status, described.partitions), (TxnStatus::Ongoing, vec![("t".into(), 0)]));
        assert_eq!(remote.last_stable_offset(topic.id, 0), Ok(2), "the open transaction holds the LSO");
        // A zombie epoch is fenced with the right error across the wire.
        assert!(matches!(remote.end_txn("tx".into(), producer_id, epoch - 1, true).await, Err(ControllerError::ProducerFenced(_))));
        let end = remote.end_txn("tx".into(), producer_id, epoch, true).await.unwrap().unwrap();
        let markers = vec![extent(1, None)];
        assert_eq!(remote.commit_object(commit("markers", markers.clone(), Some(end.clone()))).await.unwrap(), vec![Ok(6)]);
        // The same markers again: refused as stale, harmless.
        let again = remote.commit_object(commit("markers-again", markers, Some(end))).await;
        assert!(matches!(again, Err(ControllerError::InvalidTxnState(_))), "{again:?}");
        until("the LSO to pass the markers", || remote.last_stable_offset(topic.id, 0) == Ok(7)).await;
        assert_eq!(remote.describe_transaction("tx".into()).await.unwrap().unwrap().status, TxnStatus::CompleteCommit);
        assert_eq!(remote.aborted_txns(topic.id, 0, 0, 10).await.unwrap(), Vec::new());
        assert!(remote.transactions_to_finish().await.unwrap().is_empty());
        assert_eq!(remote.list_transactions(Vec::new(), Vec::new(), -1).await.unwrap().len(), 1);
        assert!(remote.pending_txn_offsets("g".into()).await.unwrap().is_empty());

        // Markers never written (the agent died after EndTxn): once MARKER_RETRY_MS passed,
        // one poller gets them and the next one does not (one writer at a time).
        let TxnInit::Ready { producer_id, epoch } = remote.init_transactional_producer("tx2".into(), 60_000, (-1, -1)).await.unwrap()
        else {
            panic!("not ready")
        };
        remote.add_partitions_to_txn("tx2".into(), producer_id, epoch, vec![("t".into(), 1)], false, None).await.unwrap();
        let end = remote.end_txn("tx2".into(), producer_id, epoch, false).await.unwrap().unwrap();
        assert!(remote.transactions_to_finish().await.unwrap().is_empty(), "not due yet");
        tokio::time::sleep(Duration::from_millis(crate::controller::txn::MARKER_RETRY_MS as u64 + 100)).await;
        assert_eq!(remote.transactions_to_finish().await.unwrap(), vec![end]);
        assert!(remote.transactions_to_finish().await.unwrap().is_empty(), "handed out to one agent at a time");

        // Transaction version 2 across the wire: Produce's implicit add starts the transaction;
        // EndTxn bumps the epoch, the markers carry it and the answer names it; a retry with the
        // old epoch gets the current one.
        let TxnInit::Ready { producer_id, epoch } = remote.init_transactional_producer("tx3".into(), 60_000, (-1, -1)).await.unwrap()
        else {
            panic!("not ready")
        };
        let added = remote
            .add_partitions_to_txn("tx3".into(), producer_id, epoch, vec![("t".into(), 0)], false, Some(2))
            .await
            .unwrap();
        assert_eq!(added, vec![Ok(())]);
        assert_eq!(remote.describe_transaction("tx3".into()).await.unwrap().unwrap().status, TxnStatus::Ongoing);
        let answer = remote.end_txn2("tx3".into(), producer_id, epoch, true, 2).await.unwrap();
        let end = answer.markers.clone().unwrap();
        assert_eq!((end.epoch, answer.producer_id, answer.epoch), (epoch + 1, producer_id, epoch + 1));
        remote.commit_object(commit("markers3", vec![extent(1, None)], Some(end))).await.unwrap();
        let retried = remote.end_txn2("tx3".into(), producer_id, epoch, true, 2).await.unwrap();
        assert_eq!((retried.markers, retried.producer_id, retried.epoch), (None, producer_id, epoch + 1));
        stop.cancel();
        svc.shutdown().await;
    }

    /// A quota change made through one agent reaches every agent (its own one too) within a
    /// second or two: the `Watch` event announces the new version; a later snapshot carries it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quota_changes_reach_every_agent() {
        use crate::api::quota::{EntityPart, QuotaAlteration, QuotaKey, QuotaOp};
        let (_dir, svc, remote, stop) = start().await;
        let other = connect(&svc, 2, stop.clone()).await;
        assert!(remote.client_quotas().entries.is_empty() && other.client_quotas().entries.is_empty());
        let alter = |value| QuotaAlteration {
            entity: vec![EntityPart { entity_type: "user".into(), name: Some("alice".into()) }],
            ops: vec![QuotaOp { key: "producer_byte_rate".into(), value }],
        };
        assert_eq!(remote.alter_client_quotas(vec![alter(Some(1024.0))], false).await.unwrap(), vec![Ok(())]);
        let t0 = std::time::Instant::now();
        let rate = |c: &Arc<dyn ControllerClient>| c.client_quotas().entries.first().map(|e| e.values[&QuotaKey::ProducerByteRate]);
        until("both agents' quotas", || rate(&remote) == Some(1024.0) && rate(&other) == Some(1024.0)).await;
        assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        // validate_only changes nothing anywhere.
        assert_eq!(other.alter_client_quotas(vec![alter(Some(1.0))], true).await.unwrap(), vec![Ok(())]);
        assert_eq!(other.alter_client_quotas(vec![alter(None)], false).await.unwrap(), vec![Ok(())]);
        until("the quota's removal", || remote.client_quotas().entries.is_empty() && other.client_quotas().entries.is_empty()).await;
        // An agent connecting later gets them with its snapshot.
        assert_eq!(remote.alter_client_quotas(vec![alter(Some(7.0))], false).await.unwrap(), vec![Ok(())]);
        let late = connect(&svc, 3, stop.clone()).await;
        assert_eq!(rate(&late), Some(7.0));
        stop.cancel();
        svc.shutdown().await;
    }
}
