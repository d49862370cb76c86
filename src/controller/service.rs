//! The controller as a shared service (`sidestream controller`): a gRPC server over one
//! [`Controller`], for agents in `[controller] mode = "remote"`.
//!
//! - **Active and standby.** With SQLite the process is always active. With PostgreSQL several
//!   replicas run at once and exactly one is active: the holder of the lease row
//!   ([`PgStore::acquire_lease`]). The active replica renews it every `failover_ms / 5`; a
//!   standby tries to take it every `failover_ms / 5`, and can once it expired (it lasts
//!   `failover_ms * 3 / 5`), so a takeover happens within `failover_ms` of the active's death.
//!   A standby answers every call with UNAVAILABLE and the active's address in the
//!   `x-sidestream-active` header; agents follow it. A replica that cannot renew steps down
//!   before its lease can have expired, and the store refuses any write from a replica whose
//!   lease epoch is no longer current, so two replicas never both assign offsets.
//! - **Agent leases and fencing.** An agent registers (the store gives it a new, higher epoch)
//!   and heartbeats within `agent_lease_ms`. A commit carries the agent's epoch; one from an
//!   older epoch, an expired lease or an agent this replica does not know (e.g. after a
//!   failover) is refused with FAILED_PRECONDITION: the agent re-registers and retries, so its
//!   data is committed under the new epoch, never under the old one.
//! - **Group commit.** Commits from all agents queue into one task, which commits everything
//!   queued while the previous transaction ran in one store transaction
//!   ([`Controller::commit_objects`]).
//! - **Commit notifications.** After each batch, a `Watch` event carries the new high
//!   watermarks and last stable offsets of the partitions it touched and the extents it
//!   appended; agents wake long-polling fetches with it, answer read_committed fetches from it
//!   and extend their index caches. A compaction swap sends the new extents (`replaced`), which
//!   take the place of the cached ones they cover.
//! - **ACLs.** Snapshots carry the version of the controller's ACLs, and an event carries the
//!   new one after each CreateAcls/DeleteAcls: agents load the set again (`all_acls` call) when it
//!   differs from theirs, so a change reaches every agent within one event's delivery.
//! - **Calls.** Every call of the table ([`crate::api::calls`]) arrives as one `Call` RPC and is
//!   answered by [`calls::dispatch`], as for an embedded controller; the service adds only what
//!   concerns several agents: a commit's fencing and group commit, orphan collection that spares
//!   live agents' keys, and handing each transaction's markers to one agent at a time.
//! - **Group and transaction coordinator.** The active replica's [`Controller`] owns every
//!   consumer group and transaction. JoinGroup/SyncGroup calls stay open for the rebalance (HTTP/2
//!   streams per connection are raised to [`STREAMS_PER_CONNECTION_MAX`] so waiting members do
//!   not hold up commits). Membership is in memory: after a restart or failover members get
//!   UNKNOWN_MEMBER_ID and rejoin; committed offsets and transactions are in the store.
//!   `transactions_to_finish` hands each transaction's markers to one agent at a time (again
//!   after [`MARKER_RETRY_MS`] if they are still not committed); a second write of the same
//!   markers is refused by the controller as stale and its object left to orphan collection.
//! - **Live agents** (for agents in cluster mode) are kept in memory only: registered, with an
//!   unexpired lease. Each heartbeat answer lists them. A restarted or newly active replica
//!   relearns them as agents register again (their first heartbeat to it is refused as unknown).
//!   A node id is one live agent: registering it from another process at another address while
//!   its lease runs is refused (a restart at the same address replaces the old process).
//! - **Client quotas.** Snapshots carry the version of the controller's client quotas, and an
//!   event carries the new one after each AlterClientQuotas: agents load the set again
//!   (`all_client_quotas` call) when it differs from theirs.
//!
//! - **The link.** With `[controller] tls_cert_file`/`tls_key_file` the service speaks gRPC
//!   over TLS, and with `tls_ca_file` it requires client certificates that CA signed (mTLS;
//!   [`crate::api::tls`]). With a token, every call must carry it; it is compared in constant
//!   time, and refusals are counted (`sidestream_controller_auth_failures_total`) and logged at
//!   most once a minute per peer address, never with what was presented.
//!
//! Must not touch: offset planning (in [`Controller`]), the wire format (in [`crate::api::rpc`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::calls;
use super::store::postgres::PgStore;
use super::store::{MetadataStore, StoreError, StoreSettings};
use super::txn::MARKER_RETRY_MS;
use super::{Controller, GROUP_COMMIT_OBJECTS_MAX};
use crate::api::calls::{self as wire, Call, Reply};
use crate::api::rpc::{self, GrpcServer, GrpcService};
use crate::api::tls::TlsFiles;
use crate::api::txn::TxnEnd;
use crate::api::{CommitRequest, ControllerError};
use crate::clock::{Clock, Entropy};
use crate::config::{GroupsConfig, StoreUrl, TopicsConfig};
use crate::failures::{LOG_INTERVAL, RateLimitedLog};

/// Commits waiting for the group-commit task; callers wait when it is full.
const COMMIT_QUEUE_MAX: usize = 4096;
/// Watch events buffered per subscriber before it must resynchronise.
const WATCH_EVENTS_MAX: usize = 1024;
/// Concurrent calls per agent connection (JoinGroup/SyncGroup wait for the whole rebalance).
const STREAMS_PER_CONNECTION_MAX: u32 = 10_000;
/// How long a stopping service lets calls in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Transactions remembered as handed out (beyond it, markers may be handed out twice).
const HANDED_OUT_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    #[error("gRPC server: {0}")]
    Transport(String),
    #[error("TLS ([controller] tls_cert_file, tls_key_file, tls_ca_file): {0}")]
    Tls(String),
}

/// What the service needs, as data.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub listen: SocketAddr,
    /// The address agents are told to use when this replica is active (defaults to `listen`).
    pub advertised: String,
    pub store: StoreUrl,
    /// Connections and timeouts of the store.
    pub store_settings: StoreSettings,
    pub token: Option<String>,
    /// With an identity: serve over TLS; with a CA too: require client certificates.
    pub tls: TlsFiles,
    pub failover_ms: u64,
    pub agent_lease_ms: u64,
    pub topics: TopicsConfig,
    pub groups: GroupsConfig,
    pub producer_id_expiration_ms: u64,
    pub transactional_id_expiration_ms: u64,
    /// `[controller] job_lease_ms`: background jobs' leases (none granted for this long after
    /// this replica becomes active).
    pub job_lease_ms: u64,
    /// `[controller] object_commit_window_ms`.
    pub object_commit_window_ms: u64,
}

struct AgentLease {
    epoch: u64,
    expires: Instant,
    /// The agent process ([`rpc::RegisterRequest::instance`]) and how clients reach it.
    instance: String,
    member: Option<rpc::Member>,
}

type CommitReply = Result<Vec<Result<i64, ControllerError>>, ControllerError>;

struct Shared {
    settings: ServiceSettings,
    store: Arc<dyn MetadataStore>,
    /// Set only with PostgreSQL: the lease decides who is active.
    pg: Option<Arc<PgStore>>,
    /// The controller while this replica is active.
    active: RwLock<Option<Arc<Controller>>>,
    /// Where the active replica is, as last read from the lease (for standby answers).
    active_hint: Mutex<Option<String>>,
    agents: Mutex<HashMap<String, AgentLease>>,
    commits: mpsc::Sender<(CommitRequest, oneshot::Sender<CommitReply>)>,
    events: broadcast::Sender<rpc::WatchEvent>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    /// Markers handed to an agent by `transactions_to_finish`: (id, producer id, epoch) and when.
    handed_out: Mutex<HashMap<(String, i64, i16), Instant>>,
}

/// A running controller service.
pub struct RunningService {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningService {
    /// Whether this replica is the active one.
    pub fn is_active(&self) -> bool {
        self.shared.controller().is_some()
    }

    /// Consumer lag per group and partition while this replica is active (nothing on a
    /// standby), as `sidestream_group_lag` samples.
    pub fn lag_source(&self) -> impl Fn() -> crate::metrics::GaugeSamples + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move || {
            let Some(c) = shared.upgrade().and_then(|s| s.controller()) else { return Vec::new() };
            c.group_lags()
                .into_iter()
                .map(|(g, t, p, lag)| (vec![("group", g), ("topic", t), ("partition", p.to_string())], lag))
                .collect()
        }
    }

    /// The active controller's last storage figures (nothing on a standby).
    pub fn storage_source(&self) -> Arc<dyn Fn() -> Option<crate::api::jobs::StorageStats> + Send + Sync> {
        let shared = Arc::downgrade(&self.shared);
        Arc::new(move || shared.upgrade()?.controller()?.last_storage_stats())
    }

    /// 1 while this replica is active, else 0 (`sidestream_controller_active`).
    pub fn active_source(&self) -> impl Fn() -> crate::metrics::GaugeSamples + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move || vec![(Vec::new(), i64::from(shared.upgrade().is_some_and(|s| s.controller().is_some())))]
    }

    /// Cancelled when the service stops (for helpers that serve alongside it).
    pub fn stopped(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops serving; an active PostgreSQL replica gives its lease up so a standby takes over
    /// at once.
    pub async fn shutdown(self) {
        // First answer waiting JoinGroup/SyncGroup calls (NOT_COORDINATOR): the server's
        // graceful stop waits for calls in flight.
        if let Some(c) = self.shared.controller() {
            c.groups().shutdown();
        }
        self.shutdown.cancel();
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
            // Watch streams never end on their own: cut what is still open (agents reconnect).
            server.abort();
        }
        if let Some(pg) = self.shared.pg.clone() {
            let _ = tokio::task::spawn_blocking(move || pg.release_lease()).await;
        }
        if let Some(c) = self.shared.take_controller() {
            c.groups().shutdown();
        }
    }
}

/// Opens the store, binds `listen` and serves until [`RunningService::shutdown`].
pub async fn start(settings: ServiceSettings, clock: Arc<dyn Clock>, entropy: Arc<dyn Entropy>) -> Result<RunningService, ServiceError> {
    // TLS first: a certificate the server cannot use stops the start before anything runs.
    let mut builder = tonic::transport::Server::builder();
    let tls = match settings.tls.server() {
        Some(config) => {
            builder = builder.tls_config(config).map_err(|e| ServiceError::Tls(rpc::error_chain(&e)))?;
            if settings.tls.has_ca() { "mutual" } else { "on" }
        }
        None => "off",
    };
    let (url, store_settings) = (settings.store.clone(), settings.store_settings);
    let (store, pg) = tokio::task::spawn_blocking(move || super::store::open(&url, &store_settings))
        .await
        .map_err(|e| ServiceError::Transport(e.to_string()))??;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServiceError::Bind { addr: settings.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServiceError::Bind { addr: settings.listen, source })?;
    let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE_MAX);
    let shared = Arc::new(Shared {
        settings,
        store,
        pg,
        active: RwLock::new(None),
        active_hint: Mutex::new(None),
        agents: Mutex::new(HashMap::new()),
        commits,
        events: broadcast::channel(WATCH_EVENTS_MAX).0,
        clock,
        entropy,
        handed_out: Mutex::new(HashMap::new()),
    });
    if shared.pg.is_none() {
        shared.clone().activate().await?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(run_group_commit(shared.clone(), commit_rx));
    if shared.pg.is_some() {
        tokio::spawn(run_lease(shared.clone(), shutdown.clone()));
    }
    let tokens = Arc::new(TokenCheck::new(shared.settings.token.clone()));
    let service = GrpcServer::new(Service(shared.clone()))
        .max_decoding_message_size(rpc::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(rpc::MESSAGE_BYTES_MAX);
    let service = tonic::service::interceptor::InterceptedService::new(service, move |req: Request<()>| {
        tokens.check(&req)?;
        Ok(req)
    });
    let stop = shutdown.clone();
    let server = tokio::spawn(
        builder
            .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
            .add_service(service)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stop.cancelled_owned()),
    );
    tracing::info!(%local_addr, tls, token = shared.settings.token.is_some(), "controller service listening");
    Ok(RunningService { local_addr, shared, shutdown, server })
}

/// The token every call must carry (when one is set), and what is done about calls without it.
struct TokenCheck {
    token: Option<String>,
    /// One line per peer address per [`LOG_INTERVAL`].
    log: RateLimitedLog,
    failures: Arc<crate::metrics::Counter>,
}

impl TokenCheck {
    fn new(token: Option<String>) -> Self {
        let failures = crate::metrics::counter(
            "sidestream_controller_auth_failures_total",
            "Calls refused for a missing or wrong [controller] token.",
            &[],
        );
        TokenCheck { token, log: RateLimitedLog::new(LOG_INTERVAL), failures }
    }

    fn check(&self, req: &Request<()>) -> Result<(), Status> {
        let Some(want) = &self.token else { return Ok(()) };
        let got = req.metadata().get(rpc::TOKEN_HEADER).map(|v| v.as_bytes());
        if got.is_some_and(|got| same_secret(want.as_bytes(), got)) {
            return Ok(());
        }
        self.failures.inc();
        let peer = req.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        if let Some(suppressed) = self.log.allow(&peer, std::time::Instant::now()) {
            let reason = if got.is_some() { "wrong token" } else { "no token" };
            tracing::warn!(
                peer,
                reason,
                suppressed,
                "refused a call with a missing or wrong controller token (logged once a minute per peer address)"
            );
        }
        Err(Status::unauthenticated("missing or wrong controller token"))
    }
}

/// Whether `got` equals `want`, in a time that depends on `want`'s length only: how much of a
/// guess is right does not show in how long the answer takes.
fn same_secret(want: &[u8], got: &[u8]) -> bool {
    let mut diff = u8::from(want.len() != got.len());
    for (i, w) in want.iter().enumerate() {
        // Past `got`'s end, compare with 0 (the lengths already differ): the loop always runs
        // over all of `want`.
        diff = std::hint::black_box(diff | (w ^ got.get(i).copied().unwrap_or(0)));
    }
    diff == 0
}

impl Shared {
    fn controller(&self) -> Option<Arc<Controller>> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn take_controller(&self) -> Option<Arc<Controller>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.active.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The active controller, or the standby answer naming who is active.
    fn active(&self) -> Result<Arc<Controller>, Status> {
        if let Some(c) = self.controller() {
            return Ok(c);
        }
        let mut status = Status::unavailable("this controller replica is a standby");
        if let Some(addr) = self.active_hint.lock().unwrap_or_else(|p| p.into_inner()).clone()
            && let Ok(v) = addr.parse()
        {
            status.metadata_mut().insert(rpc::ACTIVE_HEADER, v);
        }
        Err(status)
    }

    /// Loads the controller's view from the store and starts serving as the active replica.
    async fn activate(self: Arc<Self>) -> Result<(), ServiceError> {
        let me = self.clone();
        let controller = tokio::task::spawn_blocking(move || {
            Controller::open_with_groups(
                me.store.clone(),
                me.settings.topics.clone(),
                me.settings.producer_id_expiration_ms as i64,
                me.settings.groups.clone(),
                me.clock.clone(),
                me.entropy.clone(),
            )
            .map(|c| {
                c.with_transactional_id_expiration_ms(me.settings.transactional_id_expiration_ms as i64)
                    .with_job_leases(me.settings.job_lease_ms as i64, true)
                    .with_commit_window_ms(me.settings.object_commit_window_ms as i64)
            })
        })
        .await
        .map_err(|e| ServiceError::Transport(e.to_string()))??;
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(controller));
        // Agents watching an earlier incarnation resynchronise.
        let _ = self.events.send(rpc::WatchEvent { resync: true, ..Default::default() });
        Ok(())
    }

    /// The live agents in cluster mode, by node id.
    fn members(&self) -> Vec<rpc::Member> {
        let now = Instant::now();
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let mut members: Vec<rpc::Member> =
            agents.values().filter(|l| l.expires > now).filter_map(|l| l.member.clone()).filter(|m| m.cluster_mode).collect();
        members.sort_by_key(|m| m.node_id);
        members
    }

    /// The names of the agents whose lease runs.
    fn live_agents(&self) -> std::collections::HashSet<String> {
        let now = Instant::now();
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.iter().filter(|(_, l)| l.expires > now).map(|(name, _)| name.clone()).collect()
    }

    fn check_agent(&self, agent: &str, epoch: u64) -> Result<(), Status> {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        match agents.get(agent) {
            Some(l) if l.epoch == epoch && l.expires > Instant::now() => Ok(()),
            Some(l) if l.epoch == epoch => Err(Status::failed_precondition(format!("fenced: the lease of {agent} epoch {epoch} expired"))),
            Some(l) => Err(Status::failed_precondition(format!("fenced: {agent} epoch {epoch} is not the current epoch {}", l.epoch))),
            None => Err(Status::failed_precondition(format!("fenced: {agent} is not registered with this controller"))),
        }
    }
}

/// Refuses `agent` (a node id) from another process at another address while the lease of
/// the one registered under it runs.
fn check_duplicate(agents: &HashMap<String, AgentLease>, agent: &str, instance: &str, member: Option<&rpc::Member>) -> Result<(), Status> {
    let Some(l) = agents.get(agent) else { return Ok(()) };
    let now = Instant::now();
    let address = |m: Option<&rpc::Member>| m.map(|m| (m.host.clone(), m.port));
    if l.expires <= now || l.instance == instance || address(l.member.as_ref()) == address(member) {
        return Ok(());
    }
    let (host, port) = address(l.member.as_ref()).unwrap_or_default();
    let left_ms = (l.expires - now).as_millis();
    Err(status(ControllerError::InvalidRequest(format!(
        "duplicate node id: {agent} is registered by another live agent (at {host}:{port}); every agent \
         needs its own [agent] node_id (if that agent is gone, its lease ends in {left_ms} ms)"
    ))))
}

/// Lease duration and the renew/retry period, from `failover_ms`.
fn lease_timing(failover_ms: u64) -> (u64, Duration) {
    (failover_ms * 3 / 5, Duration::from_millis((failover_ms / 5).max(10)))
}

/// PostgreSQL replicas: take the lease when it is free, keep it while renewing works, step
/// down when it does not.
async fn run_lease(shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some(pg) = shared.pg.clone() else { return };
    let (ttl_ms, period) = lease_timing(shared.settings.failover_ms);
    let holder = format!("{}-{}", shared.settings.advertised, shared.entropy.uuid().simple());
    let mut last_renewed = Instant::now();
    loop {
        if shared.controller().is_none() {
            let (p, h, a) = (pg.clone(), holder.clone(), shared.settings.advertised.clone());
            let acquired = tokio::task::spawn_blocking(move || p.acquire_lease(&h, &a, ttl_ms)).await;
            match acquired {
                Ok(Ok(Some(epoch))) => {
                    last_renewed = Instant::now();
                    match shared.clone().activate().await {
                        Ok(()) => tracing::info!(epoch, "controller lease taken: this replica is active"),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot load the controller state; giving the lease up");
                            let p = pg.clone();
                            let _ = tokio::task::spawn_blocking(move || p.release_lease()).await;
                        }
                    }
                }
                Ok(Ok(None)) => {
                    let p = pg.clone();
                    if let Ok(Ok(Some(h))) = tokio::task::spawn_blocking(move || p.lease_holder()).await {
                        *shared.active_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.address);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the metadata store to take the lease"),
                Err(e) => tracing::warn!(error = %e, "lease task failed"),
            }
        } else {
            let p = pg.clone();
            let renewed = tokio::task::spawn_blocking(move || p.renew_lease(ttl_ms)).await;
            let step_down = match renewed {
                Ok(Ok(true)) => {
                    last_renewed = Instant::now();
                    false
                }
                Ok(Ok(false)) => {
                    tracing::warn!("controller lease lost to another replica: stepping down");
                    true
                }
                // Step down before the lease can have expired (half its length without a renewal).
                _ if last_renewed.elapsed() > Duration::from_millis(ttl_ms / 2) => {
                    tracing::warn!("cannot renew the controller lease: stepping down");
                    true
                }
                _ => false,
            };
            if step_down {
                if let Some(c) = shared.take_controller() {
                    c.groups().shutdown();
                }
            } else if shared.controller().is_some_and(|c| c.is_stale()) {
                tracing::warn!("controller view is stale: reloading it from the store");
                if let Some(c) = shared.take_controller() {
                    c.groups().shutdown();
                }
                if let Err(e) = shared.clone().activate().await {
                    tracing::error!(error = %e, "cannot reload the controller state");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// Group commit: everything queued while the previous store transaction ran goes into the
/// next one.
async fn run_group_commit(shared: Arc<Shared>, mut rx: mpsc::Receiver<(CommitRequest, oneshot::Sender<CommitReply>)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_OBJECTS_MAX {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(controller) = shared.controller() else {
            for (_, reply) in batch {
                let _ = reply.send(Err(ControllerError::Unavailable("this controller replica is a standby".into())));
            }
            continue;
        };
        let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        // Where the touched partitions end before this batch: the extents it appends follow.
        let ends_before: HashMap<(Uuid, i32), i64> = reqs
            .iter()
            .flat_map(|r| r.extents.iter().map(|e| (e.topic_id, e.partition)))
            .filter_map(|(t, p)| controller.offsets(t, p).ok().map(|o| ((t, p), o.next_offset)))
            .collect();
        let c = controller.clone();
        let started = std::time::Instant::now();
        let (reqs, results) = match tokio::task::spawn_blocking(move || {
            let results = c.commit_objects(&reqs);
            (reqs, results)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(ControllerError::Unavailable(format!("commit task failed: {e}"))));
                }
                continue;
            }
        };
        crate::metrics::histogram("sidestream_controller_commit_batch_seconds", "Store transaction time of one group commit.", &[])
            .record(started.elapsed());
        crate::metrics::counter("sidestream_controller_commits_total", "Objects committed (or replayed).", &[]).add(reqs.len() as u64);
        crate::metrics::counter("sidestream_controller_commit_batches_total", "Group commits (store transactions).", &[]).inc();
        let mut touched: Vec<(Uuid, i32)> = Vec::new();
        for (req, result) in reqs.iter().zip(&results) {
            if result.is_ok() {
                touched.extend(req.extents.iter().map(|e| (e.topic_id, e.partition)));
            }
        }
        touched.sort();
        touched.dedup();
        let partitions: Vec<rpc::Partition> = touched.into_iter().filter_map(|(t, p)| partition_now(&controller, t, p)).collect();
        if !partitions.is_empty() {
            let extents = appended_extents(&controller, &partitions, &ends_before);
            let _ = shared.events.send(rpc::WatchEvent { partitions, extents, ..Default::default() });
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// The extents a group commit appended (from the controller's memory of recent extents; a
/// partition that got more than it remembers is left out: agents ask for those when needed).
fn appended_extents(controller: &Controller, partitions: &[rpc::Partition], ends_before: &HashMap<(Uuid, i32), i64>) -> Vec<rpc::Extent> {
    let mut out = Vec::new();
    for p in partitions {
        let Ok(topic) = rpc::uuid(&p.topic_id) else { continue };
        let Some(&from) = ends_before.get(&(topic, p.partition)) else { continue };
        if from >= p.next_offset {
            continue;
        }
        if let Ok(Some(found)) = controller.find_recent_extents(topic, p.partition, from, u64::MAX) {
            out.extend(found.iter().filter(|e| e.base_offset >= from).map(rpc::extent_to));
        }
    }
    out
}

struct Service(Arc<Shared>);

fn status(e: ControllerError) -> Status {
    rpc::status_from_error(&e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ControllerError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("controller task failed: {e}")))?
        .map_err(status)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<rpc::WatchEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcService for Service {
    async fn register(&self, req: Request<rpc::RegisterRequest>) -> Result<Response<rpc::RegisterReply>, Status> {
        let c = self.0.active()?;
        let rpc::RegisterRequest { agent, member, instance } = req.into_inner();
        if agent.is_empty() {
            return Err(status(ControllerError::InvalidRequest("agent name is empty".into())));
        }
        check_duplicate(&self.0.agents.lock().unwrap_or_else(|p| p.into_inner()), &agent, &instance, member.as_ref())?;
        let store = self.0.store.clone();
        let name = agent.clone();
        let epoch = blocking(move || Ok(store.register_agent(&name)?)).await?;
        let lease_ms = self.0.settings.agent_lease_ms;
        {
            // Checked again, with the insert: another process may have registered meanwhile.
            let mut agents = self.0.agents.lock().unwrap_or_else(|p| p.into_inner());
            check_duplicate(&agents, &agent, &instance, member.as_ref())?;
            let lease = AgentLease { epoch, expires: Instant::now() + Duration::from_millis(lease_ms), instance, member };
            agents.insert(agent.clone(), lease);
        }
        tracing::info!(agent, epoch, "agent registered");
        let members = self.0.members();
        Ok(Response::new(rpc::RegisterReply { epoch, lease_ms, cluster_id: c.cluster_id().to_string(), members }))
    }

    async fn heartbeat(&self, req: Request<rpc::HeartbeatRequest>) -> Result<Response<rpc::HeartbeatReply>, Status> {
        self.0.active()?;
        let req = req.into_inner();
        self.0.check_agent(&req.agent, req.epoch)?;
        let lease = Duration::from_millis(self.0.settings.agent_lease_ms);
        if let Some(l) = self.0.agents.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&req.agent) {
            l.expires = Instant::now() + lease;
        }
        Ok(Response::new(rpc::HeartbeatReply { members: self.0.members() }))
    }

    async fn snapshot(&self, _: Request<rpc::Empty>) -> Result<Response<rpc::SnapshotReply>, Status> {
        let c = self.0.active()?;
        let topics = c.topics();
        let mut partitions = Vec::new();
        for t in &topics {
            for p in 0..t.partitions {
                partitions.extend(partition_now(&c, t.id, p));
            }
        }
        Ok(Response::new(rpc::SnapshotReply {
            cluster_id: c.cluster_id().to_string(),
            topics: topics.iter().map(|t| rpc::topic_to(t)).collect(),
            partitions,
            extents_replaced: c.extents_replaced(),
            acls_version: Some(c.acls().version),
            quotas_version: Some(c.client_quotas().version),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<rpc::Empty>) -> Result<Response<Self::WatchStream>, Status> {
        self.0.active()?;
        use tokio_stream::StreamExt;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.0.events.subscribe()).map(|e| match e {
            Ok(e) => Ok(e),
            // Missed events: the agent takes a fresh snapshot.
            Err(_) => Ok(rpc::WatchEvent { resync: true, ..Default::default() }),
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn call(&self, req: Request<rpc::CallRequest>) -> Result<Response<rpc::CallReply>, Status> {
        let c = self.0.active()?;
        let rpc::CallRequest { version, agent, epoch, body } = req.into_inner();
        wire::check_version(version).map_err(status)?;
        let call: Call = wire::decode(&body).map_err(status)?;
        let reply = match call {
            Call::CommitObject { req } => {
                self.0.check_agent(&agent, epoch)?;
                Reply::CommitObject(self.0.group_commit(req).await?)
            }
            // Another agent may still be committing its keys (after a long outage its commit
            // retries come later than our pass): leave them alone while its lease runs.
            Call::CollectOrphans { keys } => Reply::CollectOrphans(self.0.collect_orphans(&c, &agent, keys).await),
            // Agents' index caches follow a swap before the old objects can be deleted.
            Call::ReplaceExtents { lease, req } => {
                let replaced: Vec<rpc::Extent> = req.new.iter().map(rpc::extent_to).collect();
                let reply = calls::dispatch(&c, Call::ReplaceExtents { lease, req }).await;
                if matches!(reply, Reply::ReplaceExtents(Ok(()))) {
                    let _ = self.0.events.send(rpc::WatchEvent { replaced, ..Default::default() });
                }
                reply
            }
            Call::TransactionsToFinish {} => match calls::dispatch(&c, Call::TransactionsToFinish {}).await {
                Reply::TransactionsToFinish(ends) => Reply::TransactionsToFinish(ends.map(|ends| self.0.hand_out(ends))),
                other => other,
            },
            // Every agent loads the quotas again (an unchanged version costs nothing).
            Call::AlterClientQuotas { alterations, validate_only } => {
                let reply = calls::dispatch(&c, Call::AlterClientQuotas { alterations, validate_only }).await;
                if !validate_only && matches!(reply, Reply::AlterClientQuotas(Ok(_))) {
                    let version = Some(c.client_quotas().version);
                    let _ = self.0.events.send(rpc::WatchEvent { quotas_version: version, ..Default::default() });
                }
                reply
            }
            // Agents refresh their topic metadata: the configs changed.
            Call::AlterTopicConfigs { changes, validate_only } => {
                let reply = calls::dispatch(&c, Call::AlterTopicConfigs { changes, validate_only }).await;
                if !validate_only && matches!(&reply, Reply::AlterTopicConfigs(Ok(r)) if r.iter().any(Result::is_ok)) {
                    let _ = self.0.events.send(rpc::WatchEvent { resync: true, ..Default::default() });
                }
                reply
            }
            call => {
                let call_partitions = match &call {
                    Call::DeleteRecords { partitions } => Some(partitions.iter().map(|(t, p, _)| (*t, *p)).collect::<Vec<_>>()),
                    _ => None,
                };
                let topics_change = match &call {
                    Call::CreateTopic { req } => !req.validate_only,
                    Call::CreateInternalTopic { .. } => true,
                    Call::CreatePartitions { req } => !req.validate_only,
                    Call::DeleteTopic { .. } => true,
                    _ => false,
                };
                let reply = calls::dispatch(&c, call).await;
                // Every agent takes a fresh snapshot: new topics, new partitions, topics gone.
                if topics_change
                    && matches!(
                        reply,
                        Reply::CreateTopic(Ok(_))
                            | Reply::CreateInternalTopic(Ok(_))
                            | Reply::CreatePartitions(Ok(_))
                            | Reply::DeleteTopic(Ok(_))
                    )
                {
                    let _ = self.0.events.send(rpc::WatchEvent { resync: true, ..Default::default() });
                }
                // Every agent loads the ACLs again (they compare versions: an unchanged set costs nothing).
                if matches!(reply, Reply::CreateAcls(Ok(_)) | Reply::DeleteAcls(Ok(_))) {
                    let _ = self.0.events.send(rpc::WatchEvent { acls_version: Some(c.acls().version), ..Default::default() });
                }
                // Log starts that moved reach every agent (their offsets and index caches).
                let moved: Vec<(Uuid, i32)> = match (&reply, &call_partitions) {
                    (Reply::EnforceRetention(Ok(r)), _) => r.moved.iter().map(|m| (m.topic_id, m.partition)).collect(),
                    (Reply::DeleteRecords(Ok(results)), Some(asked)) => {
                        asked.iter().zip(results).filter(|(_, r)| r.is_ok()).map(|(p, _)| *p).collect()
                    }
                    _ => Vec::new(),
                };
                if !moved.is_empty() {
                    let partitions = moved.iter().filter_map(|(t, p)| partition_now(&c, *t, *p)).collect();
                    let _ = self.0.events.send(rpc::WatchEvent { partitions, ..Default::default() });
                }
                reply
            }
        };
        let body = wire::encode(&reply).map_err(status)?;
        Ok(Response::new(rpc::CallReply { version: wire::WIRE_VERSION, body }))
    }
}

impl Shared {
    /// One object's commit, through the group-commit task.
    async fn group_commit(&self, req: CommitRequest) -> Result<CommitReply, Status> {
        let (tx, rx) = oneshot::channel();
        self.commits.send((req, tx)).await.map_err(|_| Status::unavailable("the commit queue is closed"))?;
        rx.await.map_err(|_| Status::unavailable("the commit was dropped"))
    }

    /// Orphan collection for `agent`: keys of other agents whose lease runs are kept.
    async fn collect_orphans(&self, c: &Arc<Controller>, agent: &str, keys: Vec<String>) -> Result<Vec<bool>, ControllerError> {
        let live = self.live_agents();
        let (asked, indexes): (Vec<String>, Vec<usize>) = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| crate::object::keys::parse_object_key(k).is_some_and(|p| p.agent == agent || !live.contains(p.agent)))
            .map(|(i, k)| (k.clone(), i))
            .unzip();
        let answered = match calls::dispatch(c, Call::CollectOrphans { keys: asked }).await {
            Reply::CollectOrphans(r) => r?,
            other => return Err(ControllerError::InvalidRequest(format!("unexpected reply {}", other.name()))),
        };
        let mut doomed = vec![false; keys.len()];
        for (i, d) in indexes.into_iter().zip(answered) {
            doomed[i] = d;
        }
        Ok(doomed)
    }
}

/// A partition's high watermark and last stable offset now, for snapshots and events (the LSO
/// read first: both only grow, so the pair never shows an LSO above the high watermark).
fn partition_now(c: &Controller, topic_id: Uuid, partition: i32) -> Option<rpc::Partition> {
    let lso = c.last_stable_offset(topic_id, partition).ok();
    let o = c.offsets(topic_id, partition).ok()?;
    Some(rpc::Partition { last_stable_offset: lso, ..rpc::partition_to(topic_id, partition, o) })
}

impl Shared {
    /// The markers no other agent is writing now: each (transaction, epoch) goes to one caller
    /// per [`MARKER_RETRY_MS`].
    fn hand_out(&self, ends: Vec<TxnEnd>) -> Vec<TxnEnd> {
        let now = Instant::now();
        let retry = Duration::from_millis(MARKER_RETRY_MS as u64);
        let mut handed = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        handed.retain(|_, at| now.duration_since(*at) < retry);
        ends.into_iter()
            .filter(|e| {
                let key = (e.transactional_id.clone(), e.producer_id, e.epoch);
                if handed.contains_key(&key) {
                    return false;
                }
                // Full: hand out without remembering (a duplicate write is harmless).
                if handed.len() < HANDED_OUT_MAX {
                    handed.insert(key, now);
                }
                true
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{SeededEntropy, SystemClock};

    #[test]
    fn secrets_are_compared_whole() {
        assert!(same_secret(b"change-me", b"change-me"));
        assert!(same_secret(b"", b""));
        for wrong in [&b"change-mE"[..], b"change-m", b"change-me!", b"", b"Change-me"] {
            assert!(!same_secret(b"change-me", wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn token_refusals_are_counted() {
        let check = TokenCheck::new(Some("s3cret".into()));
        let with = |token: Option<&str>| {
            let mut req = Request::new(());
            if let Some(t) = token {
                req.metadata_mut().insert(rpc::TOKEN_HEADER, t.parse().unwrap());
            }
            req
        };
        let before = check.failures.get();
        check.check(&with(Some("s3cret"))).unwrap();
        assert_eq!(check.check(&with(Some("guess"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(check.check(&with(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        // The counter is shared with other tests of this process: it grew by at least these two.
        assert!(check.failures.get() >= before + 2);
        TokenCheck::new(None).check(&with(None)).unwrap();
    }

    fn member(node_id: i32, port: i32, cluster_mode: bool) -> rpc::Member {
        rpc::Member { node_id, host: "127.0.0.1".into(), port, zone: Some("z".into()), cluster_mode, listeners: Vec::new() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_agents_are_listed_and_a_duplicate_node_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ServiceSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertised: "127.0.0.1:0".into(),
            store: StoreUrl::Sqlite(dir.path().join("c.db")),
            store_settings: StoreSettings::default(),
            token: None,
            tls: TlsFiles::default(),
            failover_ms: 5000,
            agent_lease_ms: 10_000,
            topics: TopicsConfig::default(),
            groups: GroupsConfig::default(),
            producer_id_expiration_ms: 60_000,
            transactional_id_expiration_ms: 604_800_000,
            job_lease_ms: 30_000,
            object_commit_window_ms: 86_400_000,
        };
        let svc = start(settings, Arc::new(SystemClock), Arc::new(SeededEntropy::new(1))).await.unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", svc.local_addr)).unwrap().connect().await.unwrap();
        let mut c = rpc::GrpcClient::new(channel);
        let register = |agent: &str, instance: &str, m: rpc::Member| rpc::RegisterRequest {
            agent: agent.into(),
            member: Some(m),
            instance: instance.into(),
        };
        let r1 = c.register(register("agent-1", "p1", member(1, 9001, true))).await.unwrap().into_inner();
        assert_eq!(r1.members, vec![member(1, 9001, true)]);
        // A sidecar agent is live but not listed.
        c.register(register("agent-3", "p3", member(3, 9003, false))).await.unwrap();
        let r2 = c.register(register("agent-2", "p2", member(2, 9002, true))).await.unwrap().into_inner();
        assert_eq!(r2.members.iter().map(|m| m.node_id).collect::<Vec<_>>(), vec![1, 2]);
        // Node id 1 from another process at another address: refused, clearly.
        let dup = c.register(register("agent-1", "other", member(1, 9999, true))).await.unwrap_err();
        assert_eq!(dup.code(), tonic::Code::InvalidArgument);
        assert!(dup.message().contains("duplicate node id"), "{}", dup.message());
        // The same process again (fenced, re-registering), or a restart at the same address: fine.
        let again = c.register(register("agent-1", "p1", member(1, 9001, true))).await.unwrap().into_inner();
        assert!(again.epoch > r1.epoch);
        let restarted = c.register(register("agent-1", "p1b", member(1, 9001, true))).await.unwrap().into_inner();
        let beat = c.heartbeat(rpc::HeartbeatRequest { agent: "agent-2".into(), epoch: r2.epoch }).await.unwrap().into_inner();
        assert_eq!(beat.members.iter().map(|m| (m.node_id, m.port)).collect::<Vec<_>>(), vec![(1, 9001), (2, 9002)]);
        assert!(restarted.epoch > again.epoch);
        svc.shutdown().await;
    }
}
