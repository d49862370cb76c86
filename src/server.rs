//! Wiring: builds every component from a [`Config`] and runs the agent until shutdown.
//!
//! This is the only place that chooses implementations (object store backend, metadata store,
//! controller client); everything below receives its components ready-made. `main.rs` and the
//! Rust integration tests both start servers through [`start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::cache::{self, CacheSettings, ReadCache};
use crate::agent::client::remote::{Remote, RemoteSettings};
use crate::agent::client::{ControllerClient, InProcess};
use crate::agent::compaction::{CompactionSettings, ObjectCompactor};
use crate::agent::jobs::{JobRunner, ObjectCollector, RetentionJob};
use crate::agent::orphans::{InFlightKeys, OrphanCollector, OrphanSettings};
use crate::agent::txn::TxnTimer;
use crate::agent::upload::{UploadDeps, UploadSettings, Uploader};
use crate::agent::wal::{self, Recovery, Wal, WalSettings};
use crate::agent::{Agent, AgentSettings};
use crate::api::ControllerError;
use crate::clock::{Clock, Entropy, SeededEntropy, SystemClock};
use crate::config::{Config, ControllerMode, ObjectStoreUrl, PLAINTEXT_LISTENER, SecurityProtocol};
use crate::controller::Controller;
use crate::controller::store::StoreSettings;
use crate::host::{self, DataDirLock};
use crate::object::faulty::FaultyStore;
use crate::object::local::LocalStore;
use crate::object::memory::MemoryStore;
use crate::object::metrics::{MeteredStore, StoreMetrics};
use crate::object::retry::{RetryPolicy, RetryingStore};
use crate::object::s3::{S3Settings, S3Store};
use crate::object::{ObjectError, ObjectStore};
use crate::protocol::connection::{self, ConnectionLimits, Security};
use crate::protocol::listener::{Endpoint, Listener};
use crate::protocol::sasl::SaslSettings;
use crate::protocol::tls::Tls;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}{hint}", hint = bind_hint(source))]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("object store: {0}")]
    ObjectStore(#[from] ObjectError),
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    #[error("metadata store: {0}")]
    Store(#[from] crate::controller::store::StoreError),
    #[error("write-ahead log: {0}")]
    Wal(std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("controller service: {0}")]
    Service(#[from] crate::controller::service::ServiceError),
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error(transparent)]
    Cache(#[from] crate::agent::cache::CacheError),
    #[error("{source} (the filesystem of data_dir {dir} is full: {free} bytes free; free some space)")]
    DiskFull { dir: std::path::PathBuf, free: u64, source: Box<ServerError> },
}

/// Free space under which a start-up failure is reported as a full disk.
const DISK_FULL_BYTES: u64 = 1 << 20;

/// A start-up step that failed on a full `data_dir` filesystem says so (SQLite needs a little
/// space to open its journal; the WAL to record its id).
fn on_full_disk(dir: &std::path::Path, e: ServerError) -> ServerError {
    match host::available_bytes(dir) {
        Ok(free) if free < DISK_FULL_BYTES => ServerError::DiskFull { dir: dir.to_path_buf(), free, source: Box::new(e) },
        _ => e,
    }
}

/// What to do about a listener that could not be bound.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there, e.g. another sidestream or a Kafka broker: stop it, or choose another address with [agent] listen / [metrics] listen or their SIDESTREAM_* variables)"
        }
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges: choose a higher port)",
        _ => "",
    }
}

/// `sidestream controller`: the controller service alone, from `[controller]` (and the topic
/// and group defaults it applies).
pub async fn start_controller(config: &Config) -> Result<crate::controller::service::RunningService, ServerError> {
    let c = &config.controller;
    let settings = crate::controller::service::ServiceSettings {
        listen: c.listen,
        advertised: c.advertised.clone().unwrap_or_else(|| c.listen.to_string()),
        store: config.store_url().map_err(ServerError::Config)?,
        store_settings: StoreSettings::from(c),
        token: c.token.as_ref().map(|t| t.0.clone()),
        tls: config.controller_tls().map_err(|e| ServerError::Config(format!("[controller] {}: {e}", e.key)))?,
        failover_ms: c.failover_ms,
        agent_lease_ms: c.agent_lease_ms,
        topics: config.topics.clone(),
        groups: config.groups.clone(),
        producer_id_expiration_ms: c.producer_id_expiration_ms,
        transactional_id_expiration_ms: c.transactional_id_expiration_ms,
        job_lease_ms: c.job_lease_ms,
        object_commit_window_ms: c.object_commit_window_ms,
    };
    let service = crate::controller::service::start(settings, Arc::new(SystemClock), Arc::new(SeededEntropy::from_os())).await?;
    if let Some(addr) = c.metrics_listen {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let metrics_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        crate::metrics::gauges(
            "sidestream_group_lag",
            "Consumer lag per group and partition: high watermark minus committed offset.",
            service.lag_source(),
        );
        crate::controller::retention::register_storage_gauges(service.storage_source());
        crate::metrics::gauges(
            "sidestream_controller_active",
            "1 while this controller replica is the active one.",
            service.active_source(),
        );
        tokio::spawn(crate::health::serve(listener, service.stopped()));
        tracing::info!(%metrics_addr, "controller metrics listening");
    }
    // The controller's metrics over OTLP too (it handles no Produce or Fetch: no traces).
    let advertised = c.advertised.clone().unwrap_or_else(|| c.listen.to_string());
    if let Some(t) = telemetry_settings(config, &format!("controller@{advertised}"))? {
        let telemetry = crate::telemetry::Telemetry::start(t);
        let stopped = service.stopped();
        tokio::spawn(async move {
            stopped.cancelled().await;
            telemetry.shutdown().await;
        });
    }
    Ok(service)
}

/// A running agent (with its embedded controller).
pub struct RunningServer {
    /// The first listener's address (`[agent] listen` when it is on).
    pub local_addr: SocketAddr,
    /// The TLS certificates of the SSL listeners, reloaded by [`RunningServer::reload`].
    tls: Option<Arc<Tls>>,
    /// Where `GET /metrics` is served.
    pub metrics_addr: SocketAddr,
    pub agent: Arc<Agent>,
    /// The embedded controller's group coordinator (its waiting requests end at shutdown);
    /// None with a remote controller.
    groups: Option<Arc<crate::controller::groups::GroupCoordinator>>,
    /// The object store's counters (requests, bytes, errors, latency).
    pub store_metrics: Arc<StoreMetrics>,
    shutdown: CancellationToken,
    accept: JoinHandle<()>,
    shutdown_timeout: Duration,
    /// The OpenTelemetry exporter, when `[telemetry] otlp_endpoint` is set.
    telemetry: Option<crate::telemetry::Telemetry>,
    /// Held until the server is dropped (after shutdown), released by the kernel if it dies.
    _dir_lock: DataDirLock,
}

/// Components a test may hand in instead of the ones the config names.
#[derive(Default)]
pub struct Overrides {
    /// Used instead of `[object_store] url` (e.g. a fault-injecting wrapper).
    pub object_store: Option<Arc<dyn ObjectStore>>,
}

/// Builds the components the config names and starts listening.
pub async fn start(config: &Config) -> Result<RunningServer, ServerError> {
    start_with(config, Overrides::default()).await
}

/// Like [`start`], with some components handed in.
pub async fn start_with(config: &Config, overrides: Overrides) -> Result<RunningServer, ServerError> {
    // First: one agent per data_dir. A second one would replay this one's WAL and fence its
    // commits; it stops here, having touched nothing.
    let dir_lock = DataDirLock::acquire(&config.agent.data_dir)?;
    let mut cache_settings = CacheSettings {
        memory_bytes: config.cache.memory_bytes,
        disk_bytes: config.cache.disk_bytes,
        disk_write_bytes_per_s: config.cache.disk_write_bytes_per_s,
        disk_reserve_bytes: config.cache.disk_reserve_bytes,
        block_bytes: config.cache.block_bytes,
        readahead_blocks: config.cache.readahead_blocks,
        partition_readahead_bytes: config.cache.partition_readahead_bytes,
        cold_read_concurrency: config.cache.cold_read_concurrency,
        dir: config.agent.data_dir.join("cache"),
    };
    cache_settings.disk_bytes = cache::fit_disk_tier(&cache_settings);
    // Before anything opens files: a short limit is a clear error here, not a failure of
    // whatever happens to open the 1,025th file.
    let open_files = host::ensure_open_files(config.agent.max_connections.into(), cache::disk_tier_files(&cache_settings))?;
    tracing::info!(open_files, lock = %dir_lock.path().display(), "data_dir locked");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let entropy: Arc<dyn Entropy> = Arc::new(SeededEntropy::from_os());
    let store_metrics = Arc::new(StoreMetrics::new());
    let backend: Arc<dyn ObjectStore> = match overrides.object_store {
        Some(store) => store,
        None => open_object_store(config, store_metrics.clone()).await?,
    };
    let store = wrap_object_store(backend, config, store_metrics.clone(), entropy.clone());
    let cache = ReadCache::open(&cache_settings, store.clone()).await?;
    let shutdown = CancellationToken::new();
    // Bound before the controller is reached: a remote controller is told the advertised
    // addresses (connections wait in the backlog until the agent serves).
    let listeners = bind_listeners(config).await?;
    let local_addr = listeners[0]
        .socket
        .local_addr()
        .map_err(|source| ServerError::Bind { addr: listeners_first_addr(config), source })?;
    let security = Security {
        tls: open_tls(config)?,
        sasl: Arc::new(SaslSettings { mechanisms: config.sasl.mechanisms.clone(), reauth_ms: config.sasl.connections_max_reauth_ms }),
    };
    if let Some(tls) = &security.tls {
        tls.clone().watch(shutdown.clone());
    }
    let first = &listeners[0].endpoint.address;
    let member = crate::api::rpc::Member {
        node_id: config.agent.node_id,
        host: first.host.clone(),
        port: first.port,
        zone: config.agent.zone.clone(),
        cluster_mode: config.agent.cluster_mode,
        listeners: listeners
            .iter()
            .map(|l| crate::api::rpc::NamedAddress {
                name: l.endpoint.address.name.clone(),
                host: l.endpoint.address.host.clone(),
                port: l.endpoint.address.port,
            })
            .collect(),
    };
    let data_dir = config.agent.data_dir.as_path();
    let (controller, groups) = open_controller(config, member, clock.clone(), entropy.clone(), shutdown.clone())
        .await
        .map_err(|e| on_full_disk(data_dir, e))?;

    let wal_settings = WalSettings {
        dir: config.agent.data_dir.join("wal"),
        segment_bytes: config.wal.segment_bytes,
        sync: config.wal.sync,
        bytes_max: config.wal.bytes_max,
    };
    let dir = wal_settings.dir.clone();
    let recovery_entropy = entropy.clone();
    let recovery = tokio::task::spawn_blocking(move || wal::recover(&dir, &*recovery_entropy))
        .await
        .map_err(|e| ServerError::Wal(std::io::Error::other(e.to_string())))?
        .map_err(|e| on_full_disk(data_dir, ServerError::Wal(e)))?;
    let wal_mark = controller.wal_mark(recovery.log_id.clone()).await?;

    let key_prefix = String::new();
    let in_flight = Arc::new(InFlightKeys::default());
    OrphanCollector {
        store: store.clone(),
        controller: controller.clone(),
        clock: clock.clone(),
        in_flight: in_flight.clone(),
        settings: OrphanSettings {
            grace_ms: config.object_store.orphan_grace_ms,
            scan_interval: Duration::from_millis(config.object_store.orphan_scan_interval_ms),
            key_prefix: key_prefix.clone(),
        },
    }
    .spawn(shutdown.clone());
    // Background jobs: every agent offers to run them; the controller leases each to one.
    let holder = format!("agent-{}/{}", config.agent.node_id, entropy.uuid().simple());
    JobRunner {
        job: RetentionJob { controller: controller.clone() },
        controller: controller.clone(),
        holder: holder.clone(),
        interval: Duration::from_millis(config.retention.check_interval_ms),
    }
    .spawn(shutdown.clone());
    JobRunner {
        job: ObjectCollector {
            controller: controller.clone(),
            store: store.clone(),
            delete_delay_ms: config.retention.object_delete_delay_ms,
            deletes_per_s: config.retention.object_deletes_per_s,
        },
        controller: controller.clone(),
        holder: holder.clone(),
        interval: Duration::from_millis(config.retention.object_gc_interval_ms),
    }
    .spawn(shutdown.clone());
    let agent_name = format!("agent-{}", config.agent.node_id);
    if config.compaction.enabled {
        let settings = CompactionSettings {
            check_interval: Duration::from_millis(config.compaction.check_interval_ms),
            target_bytes: config.compaction.target_bytes,
            max_requests_per_s: config.compaction.max_requests_per_s,
            min_age_ms: config.compaction.min_age_ms,
            key_prefix: key_prefix.clone(),
            agent: agent_name.clone(),
        };
        let compactor =
            ObjectCompactor::new(store.clone(), controller.clone(), clock.clone(), entropy.clone(), in_flight.clone(), settings);
        JobRunner {
            job: Arc::new(compactor),
            controller: controller.clone(),
            holder,
            interval: Duration::from_millis(config.compaction.check_interval_ms),
        }
        .spawn(shutdown.clone());
    }
    let uploader = Uploader::start(
        UploadSettings {
            flush_interval: Duration::from_millis(config.upload.flush_interval_ms),
            flush_bytes: config.upload.flush_bytes,
            buffer_bytes_max: config.upload.buffer_bytes_max,
            max_in_flight_objects: config.upload.max_in_flight_objects as usize,
            quiet_flush: Duration::from_millis(config.upload.quiet_flush_ms),
            puts_per_s: config.upload.puts_per_s,
            puts_burst: config.upload.puts_burst,
            txn_puts_per_s: config.upload.txn_puts_per_s,
            txn_puts_burst: config.upload.txn_puts_burst,
            agent: agent_name,
            key_prefix,
            wal_log_id: Some(recovery.log_id.clone()),
            wal_start_mark: wal_mark,
        },
        UploadDeps {
            store: store.clone(),
            cache: Some(cache.clone()),
            controller: controller.clone(),
            clock: clock.clone(),
            entropy: entropy.clone(),
            in_flight: in_flight.clone(),
        },
    );
    crate::health::set("serving", true, "serving");
    crate::health::set("wal", false, "replaying the write-ahead log");
    replay_wal(&recovery, wal_mark, &uploader).await?;
    crate::health::set("wal", true, "replayed");
    crate::probe::Probe {
        store: store.clone(),
        controller: controller.clone(),
        wal_log_id: recovery.log_id.clone(),
        interval: Duration::from_millis(config.metrics.health_probe_interval_ms),
    }
    .spawn(shutdown.clone());
    crate::probe::register_disk_gauges(config.agent.data_dir.clone());
    let next_id = recovery.last_id().max(wal_mark) + 1;
    let wal = Wal::start(wal_settings, recovery, next_id, wal_mark, uploader.clone(), None).map_err(ServerError::Wal)?;
    TxnTimer {
        controller: controller.clone(),
        uploader: uploader.clone(),
        interval: Duration::from_millis(config.controller.transaction_check_interval_ms),
    }
    .spawn(shutdown.clone());
    let acl_settings = crate::agent::acl::AclSettings {
        enabled: config.acl.enabled,
        super_users: config.acl.super_users.clone(),
        allow_if_no_acl: config.acl.allow_if_no_acl,
    };
    let acl_source = controller.clone();
    let authorizer = crate::agent::acl::Authorizer::new(&acl_settings, move || acl_source.acls());
    let client_telemetry = crate::agent::client_telemetry::ClientTelemetry::new(&config.client_telemetry, clock.clone(), entropy.clone());
    client_telemetry.register_metrics();
    crate::agent::client_telemetry::spawn_refresh(client_telemetry.clone(), controller.clone(), shutdown.clone());
    let agent = Arc::new(Agent {
        settings: AgentSettings {
            node_id: config.agent.node_id,
            topics: config.topics.clone(),
            cluster_mode: config.agent.cluster_mode,
            zone: config.agent.zone.clone(),
            max_decompressed_batch_bytes: usize::try_from(config.agent.max_decompressed_batch_bytes).unwrap_or(usize::MAX),
            fetch_max_wait_ms_max: config.agent.fetch_max_wait_ms_max,
            log_dir: config.log_dir(),
        },
        quotas: {
            let source = controller.clone();
            crate::agent::quota::Quotas::new(Box::new(move || source.client_quotas()), clock.clone(), crate::agent::quota::ENTITIES_MAX)
        },
        controller,
        store,
        clock,
        cache,
        uploader,
        wal,
        hand_offs: Default::default(),
        txn_unflushed: Default::default(),
        share_sessions: Default::default(),
        fetch_sessions: crate::agent::fetch_session::FetchSessions::new(
            crate::agent::fetch_session::FETCH_SESSIONS_MAX,
            config.agent.fetch_sessions_bytes_max.min(usize::MAX as u64) as usize,
        ),
        authorizer,
        broker_configs: {
            let bound: Vec<_> = listeners
                .iter()
                .map(|l| crate::agent::broker_config::BoundListener {
                    name: l.endpoint.address.name.clone(),
                    protocol: l.endpoint.protocol,
                    bound: l.socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    advertised: format!("{}:{}", l.endpoint.address.host, l.endpoint.address.port),
                })
                .collect();
            crate::agent::broker_config::BrokerConfigs::new(config, &bound)
        },
        internal_topics: Default::default(),
        client_telemetry,
    });
    let limits = ConnectionLimits {
        max_request_bytes: config.agent.max_request_bytes,
        max_in_flight_request_bytes: config.agent.max_in_flight_request_bytes,
        max_connections: config.agent.max_connections as usize,
        max_connections_per_ip: config.agent.max_connections_per_ip as usize,
        max_in_flight_requests: config.agent.max_in_flight_requests as usize,
        request_read_timeout: Duration::from_millis(config.agent.request_read_timeout_ms),
        idle_timeout: Duration::from_millis(config.agent.connections_max_idle_ms),
    };
    let metrics_listener = TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.metrics.listen, source })?;
    let metrics_addr = metrics_listener.local_addr().map_err(|source| ServerError::Bind { addr: config.metrics.listen, source })?;
    tokio::spawn(crate::health::serve(metrics_listener, shutdown.clone()));
    // Logged before the first connection can be answered: whoever waits for the Kafka port finds
    // the metrics address in the log once it is up.
    let named: Vec<String> = listeners
        .iter()
        .map(|l| format!("{}={}", l.endpoint.address.name, l.socket.local_addr().map(|a| a.to_string()).unwrap_or_default()))
        .collect();
    tracing::info!(%local_addr, %metrics_addr, listeners = %named.join(","), "sidestream agent listening");
    let telemetry =
        telemetry_settings(config, &format!("agent-{}@{local_addr}", config.agent.node_id))?.map(crate::telemetry::Telemetry::start);
    let tls = security.tls.clone();
    let accept = tokio::spawn(connection::serve(listeners, agent.clone(), limits, security, shutdown.clone()));
    Ok(RunningServer {
        local_addr,
        metrics_addr,
        tls,
        agent,
        groups,
        store_metrics,
        shutdown,
        accept,
        shutdown_timeout: Duration::from_millis(config.agent.shutdown_timeout_ms),
        telemetry,
        _dir_lock: dir_lock,
    })
}

/// Binds `[agent] listen` (PLAINTEXT, when on) and every `[[listeners]]` entry, in that order.
/// A listener without `advertised` advertises its bound address (its port when it is 0).
async fn bind_listeners(config: &Config) -> Result<Vec<Listener>, ServerError> {
    let mut wanted: Vec<(String, SocketAddr, SecurityProtocol, Option<String>)> = Vec::new();
    if let Some(listen) = config.agent.listen {
        wanted.push((PLAINTEXT_LISTENER.to_string(), listen, SecurityProtocol::Plaintext, config.agent.advertised.clone()));
    }
    for l in &config.listeners {
        wanted.push((l.name.clone(), l.address, l.protocol, l.advertised.clone()));
    }
    let mut out = Vec::new();
    for (name, addr, protocol, advertised) in wanted {
        let socket = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let bound = socket.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let (host, port) = match advertised.as_deref().map(crate::config::parse_host_port) {
            Some(Ok(hp)) => hp,
            _ => (bound.ip().to_string(), bound.port().into()),
        };
        let address = crate::api::ListenerAddress { name, host, port };
        out.push(Listener { socket, endpoint: Arc::new(Endpoint { protocol, address }) });
    }
    Ok(out)
}

fn listeners_first_addr(config: &Config) -> SocketAddr {
    config
        .agent
        .listen
        .or(config.listeners.first().map(|l| l.address))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The TLS configuration, when a listener needs it; a bad certificate stops the start-up.
fn open_tls(config: &Config) -> Result<Option<Arc<Tls>>, ServerError> {
    if !config.listeners.iter().any(|l| l.protocol.tls()) {
        return Ok(None);
    }
    Tls::new(&config.tls).map(Some).map_err(|e| ServerError::Config(e.to_string()))
}

/// The controller `[controller] mode` names: embedded (in this process, over the configured
/// store) or remote (the gRPC client of `sidestream controller` replicas).
async fn open_controller(
    config: &Config,
    member: crate::api::rpc::Member,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    shutdown: CancellationToken,
) -> Result<(Arc<dyn ControllerClient>, Option<Arc<crate::controller::groups::GroupCoordinator>>), ServerError> {
    if config.controller.mode == ControllerMode::Remote {
        let settings = RemoteSettings {
            addresses: config.controller.addresses.clone(),
            token: config.controller.token.as_ref().map(|t| t.0.clone()),
            tls: config.controller_tls().map_err(|e| ServerError::Config(format!("[controller] {}: {e}", e.key)))?,
            agent: format!("agent-{}", config.agent.node_id),
            call_deadline: Duration::from_millis(config.controller.call_timeout_ms),
            connect_timeout: Duration::from_millis(config.controller.call_timeout_ms.min(2_000)),
            member,
            instance: entropy.uuid().simple().to_string(),
            index_cache_bytes_max: config.agent.index_cache_bytes_max,
        };
        // Start-up waits for a controller as long as a failover may take, and then some.
        let startup = Duration::from_millis(config.controller.call_timeout_ms.max(3 * config.controller.failover_ms));
        let remote = Remote::connect(settings, startup, shutdown).await?;
        return Ok((Arc::new(remote), None));
    }
    let store_url = config.store_url().map_err(ServerError::Config)?;
    let store_settings = StoreSettings::from(&config.controller);
    let (topics, groups_config) = (config.topics.clone(), config.groups.clone());
    let expiry_ms = config.controller.producer_id_expiration_ms as i64;
    let txn_id_expiry_ms = config.controller.transactional_id_expiration_ms as i64;
    let job_lease_ms = config.controller.job_lease_ms as i64;
    let commit_window_ms = config.controller.object_commit_window_ms as i64;
    // Blocking: opening the store and loading its snapshot (PostgreSQL's client must not run
    // on the async workers).
    let controller = tokio::task::spawn_blocking(move || -> Result<Controller, ServerError> {
        let (metadata, _) = crate::controller::store::open(&store_url, &store_settings)?;
        Ok(Controller::open_with_groups(metadata, topics, expiry_ms, groups_config, clock, entropy)?
            .with_transactional_id_expiration_ms(txn_id_expiry_ms)
            .with_job_leases(job_lease_ms, false)
            .with_commit_window_ms(commit_window_ms))
    })
    .await
    .map_err(|e| ServerError::Config(e.to_string()))??;
    let controller = Arc::new(controller);
    let groups = controller.groups().clone();
    // The embedded controller exports consumer lag and storage (a remote controller exports its own).
    let storage_source = Arc::downgrade(&controller);
    crate::controller::retention::register_storage_gauges(Arc::new(move || storage_source.upgrade()?.last_storage_stats()));
    let lag_source = Arc::downgrade(&controller);
    crate::metrics::gauges(
        "sidestream_group_lag",
        "Consumer lag per group and partition: high watermark minus committed offset.",
        move || {
            let Some(c) = lag_source.upgrade() else { return Vec::new() };
            c.group_lags()
                .into_iter()
                .map(|(g, t, p, lag)| (vec![("group", g), ("topic", t), ("partition", p.to_string())], lag))
                .collect()
        },
    );
    Ok((Arc::new(InProcess(controller)), Some(groups)))
}

/// Uploads and commits every WAL entry the controller has not committed (ids above `mark`),
/// before the agent serves: acknowledged acks=1 data is never lost, never committed twice.
pub async fn replay_wal(recovery: &Recovery, mark: u64, uploader: &Uploader) -> Result<(), ServerError> {
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut pending = Vec::new();
    let mut entries = 0u64;
    for segment in recovery.entries_after(mark) {
        for entry in segment.map_err(ServerError::Wal)? {
            let id = entry.id;
            let items = wal::entry_items(entry);
            let bytes = items.iter().map(|i| i.batch.len() as u64).sum();
            let permit = uploader.reserve(bytes, far).await.map_err(|e| ServerError::Config(e.to_string()))?;
            pending.extend(uploader.submit(items, Some(id), permit, None).map_err(|e| ServerError::Config(e.to_string()))?);
            entries += 1;
        }
    }
    if entries == 0 {
        return Ok(());
    }
    uploader.flush();
    tracing::info!(entries, after = mark, "replaying uncommitted WAL entries");
    let mut failed = 0u64;
    for p in pending {
        if let Err(e) = p.wait(far).await {
            failed += 1;
            tracing::warn!(error = %e, "a replayed WAL batch was not committed");
        }
    }
    tracing::info!(entries, failed_batches = failed, "WAL replay committed");
    Ok(())
}

impl RunningServer {
    /// SIGHUP: reloads what can be reloaded: the log level (`log_level`: the configuration's
    /// `[log] level` read again, when it changed) and the TLS certificates.
    pub fn reload(&self, log_level: Option<&str>) {
        if let Some(level) = log_level {
            match self.agent.broker_configs.reload_static_log_level(level) {
                Ok(true) => tracing::info!(level, "SIGHUP: [log] level applied; other settings are read at start"),
                Ok(false) => tracing::info!(
                    level,
                    "SIGHUP: [log] level read; the sidestream.log.level set through Kafka's config APIs stays in force until deleted"
                ),
                Err(e) => tracing::warn!(level, error = %e, "SIGHUP: [log] level refused; the log filter is unchanged"),
            }
        }
        match &self.tls {
            Some(tls) => {
                let _ = tls.reload();
            }
            None => tracing::info!("SIGHUP: nothing to reload (no TLS listener)"),
        }
    }

    /// Stops accepting and reading requests, uploads and commits every batch already accepted
    /// (without waiting for the flush interval), answers what was read (waiting fetches are
    /// cancelled, not awaited: idle and long-polling connections do not hold it up), and returns. Returns
    /// false if that did not finish within `shutdown_timeout_ms`.
    pub async fn shutdown(self) -> bool {
        crate::health::set("serving", false, "shutting down");
        self.shutdown.cancel();
        if let Some(groups) = &self.groups {
            groups.shutdown();
        }
        let agent = self.agent.clone();
        let accept = self.accept;
        let drained = async move {
            // Readers stop at once; produce requests already read finish handing off their
            // batches, then the uploader seals and commits everything, which answers them.
            agent.hand_offs.idle().await;
            agent.uploader.close().await;
            let _ = accept.await;
            agent.cache.close().await;
        };
        let clean = tokio::time::timeout(self.shutdown_timeout, drained).await.is_ok();
        tracing::info!(summary = %self.store_metrics.snapshot().summary(), "object store metrics");
        let lost = self.agent.uploader.losses().batches();
        if !clean {
            tracing::error!(timeout = ?self.shutdown_timeout,
                "shutdown timed out with uncommitted data (kept in the WAL: the next start replays it)");
        } else if lost > 0 {
            tracing::error!(
                lost_batches = lost,
                "shutdown complete, but acknowledged batches could not be committed during this run (see the errors above)"
            );
        } else {
            tracing::info!("shutdown complete: every accepted batch is committed");
        }
        if let Some(telemetry) = self.telemetry {
            // The last spans and the final counts, bounded by [telemetry] timeout_ms per export.
            telemetry.shutdown().await;
        }
        clean && lost == 0
    }
}

/// `[telemetry]` as the exporter's settings; None when export is off.
pub fn telemetry_settings(config: &Config, instance_id: &str) -> Result<Option<crate::telemetry::TelemetrySettings>, ServerError> {
    let Some(endpoint) = config.otlp_endpoint().map_err(ServerError::Config)? else { return Ok(None) };
    let t = &config.telemetry;
    Ok(Some(crate::telemetry::TelemetrySettings {
        host: endpoint.host,
        port: endpoint.port,
        path: endpoint.path,
        service_name: t.service_name.clone(),
        instance_id: instance_id.to_string(),
        metrics_interval: Duration::from_millis(t.metrics_interval_ms),
        trace_sample_ratio: t.trace_sample_ratio,
        timeout: Duration::from_millis(t.timeout_ms),
        max_queued_spans: usize::try_from(t.max_queued_spans).unwrap_or(usize::MAX),
    }))
}

/// The backend `[object_store] url` names, without the retry and metrics wrappers (wrapped in
/// fault injection when `fault_error_rate` is set). S3 counts its HTTP requests into `metrics`.
pub async fn open_object_store(config: &Config, metrics: Arc<StoreMetrics>) -> Result<Arc<dyn ObjectStore>, ServerError> {
    let os = &config.object_store;
    let store: Arc<dyn ObjectStore> = match config.object_store_url().map_err(ServerError::Config)? {
        ObjectStoreUrl::Local(path) => Arc::new(LocalStore::open(path)?),
        ObjectStoreUrl::Memory => Arc::new(MemoryStore::new()),
        ObjectStoreUrl::S3 { bucket, root } => {
            let settings = S3Settings {
                bucket,
                root,
                endpoint: os.endpoint.clone(),
                region: os.region.clone(),
                path_style: os.path_style,
                access_key_id: os.access_key_id.clone(),
                secret_access_key: os.secret_access_key.clone(),
                part_bytes: os.part_bytes,
                sign_payload: os.sign_payload,
                max_concurrent_requests: os.max_concurrent_requests as usize,
                request_timeout: Duration::from_millis(os.request_timeout_ms),
            };
            Arc::new(S3Store::connect(settings, metrics).await?)
        }
    };
    let rate = os.fault_error_rate;
    if rate <= 0.0 {
        return Ok(store);
    }
    tracing::warn!(rate, seed = os.fault_seed, "FAULT INJECTION: object store requests will fail at random");
    let entropy: Arc<dyn Entropy> = match os.fault_seed {
        0 => Arc::new(SeededEntropy::from_os()),
        seed => Arc::new(SeededEntropy::new(seed)),
    };
    let faulty = FaultyStore::new(store, entropy);
    faulty.set_error_rate(rate);
    Ok(Arc::new(faulty))
}

/// Wraps a backend as retry(metrics(backend)): the metrics see every attempt, the retries bound
/// each call by `retry_deadline_ms`.
fn wrap_object_store(
    backend: Arc<dyn ObjectStore>,
    config: &Config,
    metrics: Arc<StoreMetrics>,
    entropy: Arc<dyn Entropy>,
) -> Arc<dyn ObjectStore> {
    let metered: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(backend, metrics));
    let policy = RetryPolicy { deadline: Duration::from_millis(config.object_store.retry_deadline_ms), ..RetryPolicy::default() };
    Arc::new(RetryingStore::new(metered, policy, entropy))
}
