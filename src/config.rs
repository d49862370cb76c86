//! The `proxy.toml` schema, its defaults and its validation.
//!
//! Settings are plain data: defaults, then the file, then `SIDESTREAM_<SECTION>_<KEY>` environment
//! variables. Loading either returns a complete, validated [`Config`] or a [`ConfigError`] that
//! names the file (or variable), the key and the reason. Nothing here opens sockets or stores:
//! components are built from this data in `server.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::tls::{self, TlsFiles};

/// Every section of `proxy.toml`. Unknown keys are errors, so a typo never goes unnoticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub upload: UploadConfig,
    pub wal: WalConfig,
    pub cache: CacheConfig,
    pub object_store: ObjectStoreConfig,
    pub controller: ControllerConfig,
    pub topics: TopicsConfig,
    pub groups: GroupsConfig,
    pub retention: RetentionConfig,
    pub compaction: CompactionConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub client_telemetry: ClientTelemetryConfig,
    /// Kafka listeners besides `[agent] listen` (the PLAINTEXT one), each with its protocol.
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub sasl: SaslConfig,
    pub acl: AclConfig,
}

/// Kafka's `security.protocol` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityProtocol {
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }
}

/// One `[[listeners]]` entry: a Kafka listener with its own address and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Kafka's listener name (`EXTERNAL`): letters, digits and `_`.
    pub name: String,
    pub address: SocketAddr,
    pub protocol: SecurityProtocol,
    /// `host:port` that clients of this listener are told; defaults to `address`.
    #[serde(default)]
    pub advertised: Option<String>,
}

/// Whether a TLS listener asks for client certificates (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    None,
    Requested,
    Required,
}

/// The certificate of the SSL and SASL_SSL listeners; reloaded on SIGHUP and when the files
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// SASL on the SASL_PLAINTEXT and SASL_SSL listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// Kafka's `sasl.enabled.mechanisms`: any of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN.
    pub mechanisms: Vec<String>,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): a SASL session lasts this long at most;
    /// the client re-authenticates on the open connection or it is closed. 0: no limit.
    pub connections_max_reauth_ms: u64,
}

impl Default for SaslConfig {
    fn default() -> Self {
        Self { mechanisms: vec!["SCRAM-SHA-512".into(), "SCRAM-SHA-256".into(), "PLAIN".into()], connections_max_reauth_ms: 0 }
    }
}

/// The authorizer (Kafka's `StandardAuthorizer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Every request is checked against the ACLs when on.
    pub enabled: bool,
    /// Kafka's `super.users`: principals (`User:admin`) allowed everything.
    pub super_users: Vec<String>,
    /// Kafka's `allow.everyone.if.no.acl.found`: a resource no ACL names is open to all.
    pub allow_if_no_acl: bool,
}

/// The retention job and the object collector (both run in one agent at a time, leased from
/// the controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Kafka's `log.retention.check.interval.ms`: how often log start offsets are moved by
    /// `retention.ms` and `retention.bytes`, and committed group offsets expire.
    pub check_interval_ms: u64,
    /// Kafka's `file.delete.delay.ms`: an object no index row references is deleted from the
    /// object store this long after it lost its last reference, so reads in flight finish.
    pub object_delete_delay_ms: u64,
    /// How often the object collector looks for objects to delete.
    pub object_gc_interval_ms: u64,
    /// Object-store DELETE requests the collector makes per second at most.
    pub object_deletes_per_s: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            check_interval_ms: 300_000,
            object_delete_delay_ms: 60_000,
            object_gc_interval_ms: 30_000,
            object_deletes_per_s: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`GET /metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// How often an agent checks, even when idle, that the object store and the controller
    /// answer (a HEAD and a WAL-mark read); `/readyz` reflects the last answers.
    pub health_probe_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9644)), health_probe_interval_ms: 5_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Address of the PLAINTEXT Kafka listener; `""` turns it off (then `[[listeners]]` needs
    /// one entry at least).
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// `host:port` that clients are told to connect to; defaults to `listen`.
    pub advertised: Option<String>,
    /// Root of all local state (metadata store, local objects).
    pub data_dir: PathBuf,
    /// The broker id this agent reports in Metadata responses.
    pub node_id: i32,
    /// Largest request frame accepted; a larger frame closes the connection.
    pub max_request_bytes: u64,
    /// Bytes of requests read but not yet answered, over all connections (Kafka's
    /// queued.max.request.bytes); taken as a frame's bytes arrive (1 MiB at a time), so slow
    /// senders of huge frames hold only what they sent. Connections stop reading while it is
    /// reached.
    pub max_in_flight_request_bytes: u64,
    /// A frame whose first byte arrived must be read whole within this; else the connection
    /// closes (Kafka has no such limit: a slow sender holds its buffer until it disconnects).
    pub request_read_timeout_ms: u64,
    /// Kafka's `connections.max.idle.ms`: a connection with no request in progress and nothing
    /// read or written for this long is closed.
    pub connections_max_idle_ms: u64,
    /// Kafka's `max.connections.per.ip` (unlimited there): connections from one address beyond
    /// this are closed at accept. Loopback counts like any address.
    pub max_connections_per_ip: u32,
    /// Longest Fetch long-poll honoured: a larger `max_wait_ms` gets this.
    pub fetch_max_wait_ms_max: u64,
    /// Memory of the fetch sessions (KIP-227) of all connections; the least recently used
    /// sessions are evicted to stay under it.
    pub fetch_sessions_bytes_max: u64,
    /// Connections served at once; further connections wait in the accept queue.
    pub max_connections: u32,
    /// Requests read ahead on one connection while earlier ones are still being answered. High:
    /// acks=all requests each wait up to a flush interval, and clients pipeline many.
    pub max_in_flight_requests: u32,
    /// How long SIGTERM waits for in-flight data to be uploaded and committed.
    pub shutdown_timeout_ms: u64,
    /// Agents as a shared tier behind a load balancer (remote controller only): Metadata lists
    /// every live agent and spreads partition leadership over them. Off: the sidecar behaviour
    /// (this agent is the broker of every partition).
    pub cluster_mode: bool,
    /// This agent's availability zone; clients whose `client.id` contains `sidestream_az=<zone>`
    /// are given leaders in their zone (cluster mode).
    pub zone: Option<String>,
    /// Memory for the remote controller's partition index cached in the agent (committed
    /// extents); 0 turns the cache off.
    pub index_cache_bytes_max: u64,
    /// Most bytes a produced batch's records may decompress to while they are validated; a
    /// batch past it gets INVALID_RECORD. Bounds the memory of a decompression bomb.
    pub max_decompressed_batch_bytes: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9092))),
            advertised: None,
            data_dir: PathBuf::from("./sidestream-data"),
            node_id: 1,
            max_request_bytes: 100 * 1024 * 1024,
            max_in_flight_request_bytes: 512 * 1024 * 1024,
            request_read_timeout_ms: 30_000,
            connections_max_idle_ms: 600_000,
            max_connections_per_ip: 1000,
            fetch_max_wait_ms_max: 30_000,
            fetch_sessions_bytes_max: 64 * 1024 * 1024,
            max_connections: 10_000,
            max_in_flight_requests: 1024,
            shutdown_timeout_ms: 30_000,
            cluster_mode: false,
            zone: None,
            index_cache_bytes_max: 64 * 1024 * 1024,
            // 32 times Kafka's default max.message.bytes.
            max_decompressed_batch_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// An object is flushed at most this long after its first batch arrived.
    pub flush_interval_ms: u64,
    /// An object is flushed as soon as it holds this many bytes.
    pub flush_bytes: u64,
    /// Bytes accepted but not yet committed; produce requests wait when it is reached.
    pub buffer_bytes_max: u64,
    /// Objects being uploaded at once (they are committed in the order they were sealed).
    pub max_in_flight_objects: u32,
    /// An object with acks=all producers waiting is flushed once nothing arrived for this long
    /// (they are at their in-flight limit or have nothing more to send), budget permitting.
    pub quiet_flush_ms: u64,
    /// The budget of those early flushes: PUTs per second (0 turns them off)...
    pub puts_per_s: u32,
    /// ...and how many may be spent at once after a quiet spell.
    pub puts_burst: u32,
    /// The transactions' own PUT budget, besides `puts_per_s`: early flushes of objects a
    /// transactional producer waits for, and transaction marker objects (0: none)...
    pub txn_puts_per_s: u32,
    /// ...and its burst.
    pub txn_puts_burst: u32,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 250,
            flush_bytes: 8 * 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            max_in_flight_objects: 4,
            quiet_flush_ms: 2,
            puts_per_s: 4,
            puts_burst: 4,
            txn_puts_per_s: 20,
            txn_puts_burst: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WalSync {
    /// fsync after every group of entries: acks=1 survives an agent crash.
    #[default]
    Fsync,
    /// Never fsync. Unsafe: acknowledged acks=1 data can be lost on a crash. Benchmarks only.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub sync: WalSync,
    /// WAL bytes on disk not yet committed; acks=0/1 produce requests wait when it is reached.
    pub bytes_max: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self { segment_bytes: 64 * 1024 * 1024, sync: WalSync::Fsync, bytes_max: 2 * 1024 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory tier of the read cache.
    pub memory_bytes: u64,
    /// Disk tier under `<data_dir>/cache`; 0 disables it.
    pub disk_bytes: u64,
    /// Bytes per second written into the disk tier at most (0: no limit). Blocks evicted from
    /// memory beyond this rate are dropped rather than written, so a fast producer does not
    /// pay for its data twice on the local disk (WAL, then cache).
    pub disk_write_bytes_per_s: u64,
    /// Free space of `data_dir`'s filesystem kept for the WAL and the metadata store: at
    /// start-up the disk tier is shrunk (or left out) so that this much stays free.
    pub disk_reserve_bytes: u64,
    /// The cached unit: a block of an object.
    pub block_bytes: u64,
    /// Blocks of the same object fetched ahead of a sequential reader.
    pub readahead_blocks: u32,
    /// Bytes fetched ahead (in the same GET) in a per-partition object, written by object
    /// compaction: all of it is the reader's partition.
    pub partition_readahead_bytes: u64,
    /// Object store GETs of cold blocks at once (uploads do not share this budget).
    pub cold_read_concurrency: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 * 1024 * 1024,
            disk_bytes: 4 * 1024 * 1024 * 1024,
            disk_write_bytes_per_s: 64 * 1024 * 1024,
            disk_reserve_bytes: 1024 * 1024 * 1024,
            block_bytes: 1024 * 1024,
            readahead_blocks: 4,
            partition_readahead_bytes: 64 * 1024 * 1024,
            cold_read_concurrency: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/root`, `file:///path` (local directory), or `memory://` (tests only;
    /// nothing persists). Defaults to `file://<data_dir>/objects`.
    pub url: Option<String>,
    /// S3 endpoint URL, e.g. `http://127.0.0.1:9000`; unset: AWS S3 in `region`.
    pub endpoint: Option<String>,
    /// S3 region; unset: the AWS chain (`AWS_REGION`, profile), then `us-east-1`.
    pub region: Option<String>,
    /// Path-style S3 URLs (`endpoint/bucket/key`): MinIO and most self-hosted servers.
    pub path_style: bool,
    /// Static S3 credentials (both or neither); unset: the standard AWS credential chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Objects larger than this are uploaded in parts of this size; reads longer than this are
    /// split into parallel ranged GETs.
    pub part_bytes: u64,
    /// Sign request bodies (SigV4 SHA-256 of every PUT body). Off by default: every record
    /// batch carries Kafka's CRC32C (clients verify it), each object's index its own, and
    /// hashing bodies costs about a fifth of the agent's CPU at full produce speed. Turn on
    /// for an S3 service that requires it.
    pub sign_payload: bool,
    /// HTTP requests in flight to the object store at once.
    pub max_concurrent_requests: u32,
    /// Timeout of one request attempt.
    pub request_timeout_ms: u64,
    /// A call (all its retries) gives up after this long; uploads are then retried by the
    /// upload pipeline, reads answered with a retriable error.
    pub retry_deadline_ms: u64,
    /// An uploaded object that is still not committed this long after its key was made is an
    /// orphan (its agent crashed between upload and commit) and is deleted.
    pub orphan_grace_ms: u64,
    /// How often the orphan collector walks the store.
    pub orphan_scan_interval_ms: u64,
    /// Failure testing only: the fraction of object store requests that fail (transiently).
    pub fault_error_rate: f64,
    /// Seed of the injected failures (0: random).
    pub fault_seed: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            part_bytes: 16 * 1024 * 1024,
            sign_payload: false,
            max_concurrent_requests: 64,
            request_timeout_ms: 30_000,
            retry_deadline_ms: 30_000,
            orphan_grace_ms: 3_600_000,
            orphan_scan_interval_ms: 600_000,
            fault_error_rate: 0.0,
            fault_seed: 0,
        }
    }
}

/// A credential: read like a string, never printed (`Debug` shows `<redacted>`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ControllerMode {
    #[default]
    Embedded,
    Remote,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    pub mode: ControllerMode,
    /// `sqlite:///path/to/file.db` or `postgres://user@host:port/db`; defaults to
    /// `sqlite://<data_dir>/controller.db`.
    pub store: Option<String>,
    /// Reader connections of the metadata store at most (index lookups; writes have one
    /// connection of their own, and PostgreSQL's lease another).
    pub store_read_connections: u32,
    /// PostgreSQL: how long opening a connection to the store may take.
    pub store_connect_timeout_ms: u64,
    /// How long one store statement may run or wait for a lock before it fails (retriable):
    /// PostgreSQL's `statement_timeout` and `idle_in_transaction_session_timeout`, SQLite's
    /// `busy_timeout`.
    pub store_statement_timeout_ms: u64,
    /// Kafka's producer.id.expiration.ms: an idempotent producer idle this long is forgotten
    /// (not while it has a transaction open in the partition).
    pub producer_id_expiration_ms: u64,
    /// Kafka's transactional.id.expiration.ms: a transactional id with no transaction in
    /// progress that was not used for this long is forgotten.
    pub transactional_id_expiration_ms: u64,
    /// `sidestream controller`: the gRPC address agents connect to.
    pub listen: SocketAddr,
    /// `sidestream controller`: the address other replicas tell agents to use when this one is
    /// active (defaults to `listen`).
    pub advertised: Option<String>,
    /// `sidestream controller`: where it serves `GET /metrics` (commit latency, consumer lag of
    /// every group, which replica is active) and `/healthz`; unset: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Remote agents: the controller replicas, `host:port`.
    pub addresses: Vec<String>,
    /// Shared token: a controller with one refuses agents that do not present it.
    pub token: Option<Secret>,
    /// PEM certificate chain. `sidestream controller`: serve gRPC over TLS with it. Remote
    /// agents: the client certificate presented to controllers that require one (mTLS).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s). Remote agents: connect over TLS and verify the controller's
    /// certificate with it. `sidestream controller`: require client certificates it signed.
    pub tls_ca_file: Option<PathBuf>,
    /// PostgreSQL replicas: a standby takes over within this long after the active one died.
    pub failover_ms: u64,
    /// An agent that has not heartbeaten for this long is fenced (its commits are refused until
    /// it registers again for a new epoch).
    pub agent_lease_ms: u64,
    /// Remote agents: how long one controller call retries before it fails (commits are then
    /// retried by the uploader, indefinitely).
    pub call_timeout_ms: u64,
    /// Kafka's transaction.abort.timed.out.transaction.cleanup.interval.ms: how often
    /// transactions older than their timeout are aborted (and unfinished ones finished).
    pub transaction_check_interval_ms: u64,
    /// How long a background job (retention, object collection, compaction) is leased to one
    /// agent; the agent renews it while it runs. A controller that just took over grants no job
    /// for this long, so a job leased from its predecessor has ended first.
    pub job_lease_ms: u64,
    /// An object is committed within this long after its key was made, or never: an older key
    /// is refused and its agent uploads the data again under a new key. The controller
    /// remembers collected and deleted keys this long (so its books stay bounded).
    pub object_commit_window_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            mode: ControllerMode::Embedded,
            store: None,
            store_read_connections: 2,
            store_connect_timeout_ms: 5_000,
            store_statement_timeout_ms: 10_000,
            producer_id_expiration_ms: 86_400_000,
            transactional_id_expiration_ms: 604_800_000,
            listen: SocketAddr::from(([127, 0, 0, 1], 9093)),
            advertised: None,
            metrics_listen: None,
            addresses: Vec::new(),
            token: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            failover_ms: 5_000,
            agent_lease_ms: 10_000,
            call_timeout_ms: 10_000,
            transaction_check_interval_ms: 1_000,
            job_lease_ms: 30_000,
            object_commit_window_ms: 86_400_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Kafka's `auto.create.topics.enable`.
    pub auto_create: bool,
    /// Kafka's `num.partitions`: partitions of an auto-created topic or of a CreateTopics with -1.
    pub num_partitions: i32,
    /// Kafka's `message.max.bytes`: the default of a topic's `max.message.bytes`.
    pub max_message_bytes: i32,
    /// Partitions of all topics together; a CreateTopics (or auto-creation) beyond it is
    /// refused with POLICY_VIOLATION.
    pub max_partitions_total: u64,
    /// Kafka's `log.retention.ms`: the default of a topic's `retention.ms` (-1: forever).
    pub retention_ms: i64,
    /// Kafka's `log.retention.bytes`: the default of a topic's `retention.bytes` per
    /// partition (-1: no limit).
    pub retention_bytes: i64,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            auto_create: true,
            num_partitions: 1,
            max_message_bytes: 1_048_588,
            max_partitions_total: 100_000,
            retention_ms: 604_800_000,
            retention_bytes: -1,
        }
    }
}

/// Object compaction: small objects of many partitions rewritten into per-partition objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Whether this process runs the object compaction job.
    pub enabled: bool,
    /// How often the job looks for work (Kafka's `log.cleaner.backoff.ms`).
    pub check_interval_ms: u64,
    /// Size of the per-partition objects it writes, at most; objects under half of it are
    /// rewritten. It also bounds the job's memory: about three times this.
    pub target_bytes: u64,
    /// Object store requests (GETs and PUTs) per second the job makes at most.
    pub max_requests_per_s: u32,
    /// Uploaded objects younger than this are left alone (their agent may still be answering
    /// a retried commit of theirs).
    pub min_age_ms: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval_ms: 15_000,
            target_bytes: 64 * 1024 * 1024,
            max_requests_per_s: 100,
            min_age_ms: 60_000,
        }
    }
}

/// Consumer group coordination: limits and timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Kafka's `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty
    /// group waits for more members.
    pub initial_rebalance_delay_ms: u64,
    /// Kafka's `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// Groups the coordinator holds (with members or committed offsets).
    pub max_groups: usize,
    /// Kafka's `group.max.size` (and `group.consumer.max.size`).
    pub max_members_per_group: usize,
    /// Kafka's `offset.metadata.max.bytes`.
    pub max_offset_metadata_bytes: usize,
    /// KIP-848: `group.consumer.session.timeout.ms` and `group.consumer.heartbeat.interval.ms`.
    pub consumer_session_timeout_ms: i32,
    pub consumer_heartbeat_interval_ms: i32,
    /// KIP-1071 streams groups: Kafka's `group.streams.num.standby.replicas` (standby tasks per
    /// active task, on other members). Session and heartbeat timings are the consumer ones.
    pub streams_num_standby_replicas: u32,
    /// Kafka's `offsets.retention.minutes`, in ms: a group's committed offsets expire this long
    /// after the group became empty (or, for a group that never had members, after their commit).
    pub offsets_retention_ms: u64,
    /// Share groups (KIP-932), Kafka's `group.share.*` defaults; each group may override the
    /// first four with IncrementalAlterConfigs on its GROUP resource (`share.session.timeout.ms`,
    /// `share.heartbeat.interval.ms`, `share.record.lock.duration.ms`, `share.delivery.count.limit`).
    pub share_session_timeout_ms: i32,
    pub share_heartbeat_interval_ms: i32,
    pub share_record_lock_duration_ms: i32,
    pub share_delivery_count_limit: i16,
    /// Kafka's `group.share.partition.max.record.locks`: records in flight per share-partition.
    pub share_max_record_locks: usize,
    /// Share-partitions (group and partition) the coordinator holds state for, over all groups.
    pub max_share_partitions: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            initial_rebalance_delay_ms: 500,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_groups: 10_000,
            max_members_per_group: 1_000,
            max_offset_metadata_bytes: 4_096,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            streams_num_standby_replicas: 0,
            offsets_retention_ms: 604_800_000,
            share_session_timeout_ms: 45_000,
            share_heartbeat_interval_ms: 5_000,
            share_record_lock_duration_ms: 30_000,
            share_delivery_count_limit: 5,
            share_max_record_locks: 2_000,
            max_share_partitions: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `sidestream=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// `[telemetry]`: OpenTelemetry export (OTLP/HTTP with JSON bodies) of the metrics and of
/// sampled traces of Produce and Fetch requests. Off while `otlp_endpoint` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base address, e.g. `http://127.0.0.1:4318`: metrics are POSTed
    /// to `<it>/v1/metrics`, traces to `<it>/v1/traces`. Empty: nothing is exported.
    pub otlp_endpoint: String,
    /// `service.name` of every exported resource.
    pub service_name: String,
    /// How often the whole metrics registry is exported (cumulative values).
    pub metrics_interval_ms: u64,
    /// The share of Produce and Fetch requests traced, 0.0 to 1.0 (decided once per request).
    pub trace_sample_ratio: f64,
    /// The longest one export (connect, send, answer) may take before it is given up.
    pub timeout_ms: u64,
    /// Ended spans waiting for export; more are dropped (and counted).
    pub max_queued_spans: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "sidestream".into(),
            metrics_interval_ms: 10_000,
            trace_sample_ratio: 0.01,
            timeout_ms: 5_000,
            max_queued_spans: 4_096,
        }
    }
}

/// `[client_telemetry]`: the metrics clients push to the agent (KIP-714: GetTelemetrySubscriptions
/// and PushTelemetry), shown on `GET /metrics` as `kafka_client_*` series. The subscription every
/// client gets is this section (Kafka sets it per client with `kafka-client-metrics.sh`; not
/// served here). Off (clients are told to push nothing) until `enabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTelemetryConfig {
    pub enabled: bool,
    /// Metric name prefixes clients are asked for (Kafka's `metrics`): `*` is every metric;
    /// empty is none.
    pub metrics: Vec<String>,
    /// How often clients push (Kafka's `interval.ms`); a push sooner is refused.
    pub push_interval_ms: u64,
    /// The largest compressed payload of a push (Kafka's `telemetry.max.bytes`).
    pub max_bytes: u64,
    /// The largest payload after decompression.
    pub max_decompressed_bytes: u64,
    /// Client instances whose metrics are kept; a new one evicts the longest silent.
    pub max_clients: u64,
    /// Series kept per client instance; more are dropped (and counted).
    pub max_series_per_client: u64,
}

impl Default for ClientTelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            metrics: vec!["*".into()],
            push_interval_ms: 30_000,
            max_bytes: 1 << 20,
            max_decompressed_bytes: 8 << 20,
            max_clients: 256,
            max_series_per_client: 500,
        }
    }
}

/// Where OTLP/HTTP goes, parsed from `[telemetry] otlp_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    pub host: String,
    pub port: u16,
    /// The base path (without a trailing `/`): signals go to `<path>/v1/traces` and `/v1/metrics`.
    pub path: String,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: key `{key}`: {reason}")]
pub struct ConfigError {
    /// The file path, or `environment variable SIDESTREAM_...`.
    pub source_name: String,
    /// Dotted key path, e.g. `agent.listen`.
    pub key: String,
    pub reason: String,
}

/// Where the object store lives, parsed from `[object_store] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreUrl {
    Local(PathBuf),
    Memory,
    /// `s3://bucket/root`: the bucket, and the path every key lives under (may be empty).
    S3 {
        bucket: String,
        root: String,
    },
}

/// Where the controller's metadata lives, parsed from `[controller] store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    /// The whole `postgres://` URL, as the PostgreSQL client takes it.
    Postgres(String),
}

/// The listener name of `[agent] listen`.
pub const PLAINTEXT_LISTENER: &str = "PLAINTEXT";
/// The SASL mechanisms built.
pub const SASL_MECHANISMS: &[&str] = &["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];
const ENV_PREFIX: &str = "SIDESTREAM_";
const SECTIONS: &[&str] = &[
    "agent",
    "client_telemetry",
    "upload",
    "wal",
    "cache",
    "object_store",
    "controller",
    "topics",
    "groups",
    "retention",
    "compaction",
    "metrics",
    "log",
    "telemetry",
    "tls",
    "sasl",
    "acl",
];

/// `SIDESTREAM_*` variables of the project's own test and bench tools (they pass their whole
/// environment to the servers they start): not settings, and not errors.
const TOOL_VARIABLES: &[&str] = &[
    "SIDESTREAM_BIN",
    "SIDESTREAM_START_TIMEOUT",
    "SIDESTREAM_STOP_TIMEOUT",
    "SIDESTREAM_CRASH_KILLS",
    "SIDESTREAM_FUZZ_SECONDS",
    "SIDESTREAM_KAFKA_REF_DIR",
    "SIDESTREAM_REBALANCE_TIMES",
    "SIDESTREAM_CLI",
];
const TOOL_PREFIXES: &[&str] = &["SIDESTREAM_TEST_", "SIDESTREAM_COMPAT_", "SIDESTREAM_BENCH_"];

fn is_tool_variable(var: &str) -> bool {
    TOOL_VARIABLES.contains(&var) || TOOL_PREFIXES.iter().any(|p| var.starts_with(p))
}

/// The command a configuration is for: `[controller]`'s TLS keys mean different things to each,
/// and some rules hold for one only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `sidestream serve`: an agent (with an embedded or a remote controller).
    Agent,
    /// `sidestream controller`: a controller replica serving agents.
    Controller,
}

impl Config {
    /// Loads `path` (or the built-in defaults when `None`), applies the `SIDESTREAM_*` variables
    /// from `env`, validates for an agent and creates `data_dir`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        Self::load_for(Role::Agent, path, env)
    }

    /// [`Config::load`], validated for `role`.
    pub fn load_for(role: Role, path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let file_name = path.map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
        let mut table: toml::Table = match path {
            None => toml::Table::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source_name: file_name.clone(),
                    key: "-".into(),
                    reason: format!("cannot read the file: {e}"),
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    let at = e.span().map(|s| {
                        let before = &text[..s.start.min(text.len())];
                        let line = before.matches('\n').count() + 1;
                        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                        format!(" at line {line}, column {column}")
                    });
                    ConfigError {
                        source_name: file_name.clone(),
                        key: "-".into(),
                        reason: format!("TOML syntax error{}: {}", at.unwrap_or_default(), e.message()),
                    }
                })?
            }
        };
        let env_keys = apply_env(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let source_name = env_keys
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, var)| format!("environment variable {var}"))
                .unwrap_or_else(|| file_name.clone());
            let reason = e.into_inner().message().to_string();
            ConfigError { source_name, key, reason }
        })?;
        config.validate(&file_name, role).map_err(|mut e| {
            if let Some((_, var)) = env_keys.iter().find(|(k, _)| *k == e.key) {
                e.source_name = format!("environment variable {var}");
            }
            e
        })?;
        Ok(config)
    }

    fn validate(&self, source_name: &str, role: Role) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| ConfigError { source_name: source_name.to_string(), key: key.to_string(), reason };
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi { Err(err(key, format!("{v} is outside {lo}..={hi}"))) } else { Ok(()) }
        };
        range("upload.flush_interval_ms", self.upload.flush_interval_ms, 1, 60_000)?;
        range("metrics.health_probe_interval_ms", self.metrics.health_probe_interval_ms, 100, 3_600_000)?;
        range("upload.flush_bytes", self.upload.flush_bytes, 1024, 1 << 30)?;
        range("upload.buffer_bytes_max", self.upload.buffer_bytes_max, self.upload.flush_bytes, 64 << 30)?;
        range("upload.max_in_flight_objects", self.upload.max_in_flight_objects.into(), 1, 64)?;
        range("upload.quiet_flush_ms", self.upload.quiet_flush_ms, 0, self.upload.flush_interval_ms)?;
        range("upload.puts_per_s", self.upload.puts_per_s.into(), 0, 10_000)?;
        range("upload.puts_burst", self.upload.puts_burst.into(), 0, 10_000)?;
        range("upload.txn_puts_per_s", self.upload.txn_puts_per_s.into(), 0, 10_000)?;
        range("upload.txn_puts_burst", self.upload.txn_puts_burst.into(), 0, 10_000)?;
        range("wal.segment_bytes", self.wal.segment_bytes, 64 * 1024, 16 << 30)?;
        range("wal.bytes_max", self.wal.bytes_max, self.wal.segment_bytes, 1 << 50)?;
        range("controller.producer_id_expiration_ms", self.controller.producer_id_expiration_ms, 1000, 1 << 40)?;
        range("controller.transactional_id_expiration_ms", self.controller.transactional_id_expiration_ms, 1000, 1 << 40)?;
        range("controller.transaction_check_interval_ms", self.controller.transaction_check_interval_ms, 10, 3_600_000)?;
        range("controller.store_read_connections", self.controller.store_read_connections.into(), 1, 32)?;
        range("controller.store_connect_timeout_ms", self.controller.store_connect_timeout_ms, 100, 600_000)?;
        range("controller.store_statement_timeout_ms", self.controller.store_statement_timeout_ms, 100, 3_600_000)?;
        range("cache.memory_bytes", self.cache.memory_bytes, 1 << 20, 1 << 40)?;
        range("cache.block_bytes", self.cache.block_bytes, 4096, 64 << 20)?;
        if self.cache.disk_bytes != 0 {
            range("cache.disk_bytes", self.cache.disk_bytes, 4 * self.cache.block_bytes.max(1 << 20), 1 << 44)?;
        }
        range("cache.disk_reserve_bytes", self.cache.disk_reserve_bytes, 0, 1 << 44)?;
        range("cache.readahead_blocks", self.cache.readahead_blocks.into(), 0, 1024)?;
        range("cache.partition_readahead_bytes", self.cache.partition_readahead_bytes, 0, 1 << 30)?;
        range("compaction.check_interval_ms", self.compaction.check_interval_ms, 10, 86_400_000)?;
        range("compaction.target_bytes", self.compaction.target_bytes, 1 << 20, 4 << 30)?;
        range("compaction.max_requests_per_s", self.compaction.max_requests_per_s.into(), 1, 100_000)?;
        range("compaction.min_age_ms", self.compaction.min_age_ms, 0, 30 * 86_400_000)?;
        range("cache.cold_read_concurrency", self.cache.cold_read_concurrency.into(), 1, 4096)?;
        range("agent.max_request_bytes", self.agent.max_request_bytes, 1024, 1 << 30)?;
        range("agent.max_in_flight_request_bytes", self.agent.max_in_flight_request_bytes, 1024, 64 << 30)?;
        range("agent.max_connections", self.agent.max_connections.into(), 1, 1_000_000)?;
        range("agent.request_read_timeout_ms", self.agent.request_read_timeout_ms, 10, 3_600_000)?;
        range("agent.connections_max_idle_ms", self.agent.connections_max_idle_ms, 10, 30 * 86_400_000)?;
        range("agent.max_connections_per_ip", self.agent.max_connections_per_ip.into(), 1, 1_000_000)?;
        range("agent.fetch_max_wait_ms_max", self.agent.fetch_max_wait_ms_max, 0, 3_600_000)?;
        range("agent.fetch_sessions_bytes_max", self.agent.fetch_sessions_bytes_max, 1 << 16, 1 << 40)?;
        range("agent.max_in_flight_requests", self.agent.max_in_flight_requests.into(), 1, 65536)?;
        range("agent.shutdown_timeout_ms", self.agent.shutdown_timeout_ms, 0, 3_600_000)?;
        range("agent.max_decompressed_batch_bytes", self.agent.max_decompressed_batch_bytes, 1024, 1 << 31)?;
        let os = &self.object_store;
        range("object_store.part_bytes", os.part_bytes, 5 << 20, 5 << 30)?;
        range("object_store.max_concurrent_requests", os.max_concurrent_requests.into(), 1, 4096)?;
        range("object_store.request_timeout_ms", os.request_timeout_ms, 100, 600_000)?;
        range("object_store.retry_deadline_ms", os.retry_deadline_ms, 100, 3_600_000)?;
        range("object_store.orphan_grace_ms", os.orphan_grace_ms, 0, 30 * 86_400_000)?;
        range("object_store.orphan_scan_interval_ms", os.orphan_scan_interval_ms, 10, 86_400_000)?;
        if os.access_key_id.is_some() != os.secret_access_key.is_some() {
            return Err(err(
                "object_store.access_key_id",
                "set both access_key_id and secret_access_key, or neither (the AWS credential chain)".into(),
            ));
        }
        if let Some(endpoint) = &os.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(err("object_store.endpoint", format!("{endpoint:?} must start with http:// or https://")));
        }
        range("topics.num_partitions", self.topics.num_partitions.max(0) as u64, 1, 100_000)?;
        range("topics.max_message_bytes", self.topics.max_message_bytes.max(0) as u64, 1024, 1 << 30)?;
        range("topics.max_partitions_total", self.topics.max_partitions_total, 1, 100_000_000)?;
        if self.topics.retention_ms < -1 || self.topics.retention_bytes < -1 {
            return Err(err("topics.retention_ms", "retention_ms and retention_bytes must be -1 (no limit) or positive".into()));
        }
        let r = &self.retention;
        range("retention.check_interval_ms", r.check_interval_ms, 10, 86_400_000)?;
        range("retention.object_delete_delay_ms", r.object_delete_delay_ms, 0, 86_400_000)?;
        range("retention.object_gc_interval_ms", r.object_gc_interval_ms, 10, 86_400_000)?;
        range("retention.object_deletes_per_s", r.object_deletes_per_s.into(), 1, 100_000)?;
        range("controller.job_lease_ms", self.controller.job_lease_ms, 100, 600_000)?;
        range("controller.object_commit_window_ms", self.controller.object_commit_window_ms, 60_000, 30 * 86_400_000)?;
        range("groups.offsets_retention_ms", self.groups.offsets_retention_ms, 1_000, 1 << 45)?;
        let g = &self.groups;
        range("groups.initial_rebalance_delay_ms", g.initial_rebalance_delay_ms, 0, 300_000)?;
        range("groups.min_session_timeout_ms", g.min_session_timeout_ms.max(0) as u64, 1, 3_600_000)?;
        range("groups.max_session_timeout_ms", g.max_session_timeout_ms.max(0) as u64, g.min_session_timeout_ms.max(1) as u64, 3_600_000)?;
        range("groups.max_groups", g.max_groups as u64, 1, 10_000_000)?;
        range("groups.max_members_per_group", g.max_members_per_group as u64, 1, 100_000)?;
        range("groups.max_offset_metadata_bytes", g.max_offset_metadata_bytes as u64, 0, 1 << 20)?;
        range("groups.consumer_session_timeout_ms", g.consumer_session_timeout_ms.max(0) as u64, 1, 3_600_000)?;
        range(
            "groups.consumer_heartbeat_interval_ms",
            g.consumer_heartbeat_interval_ms.max(0) as u64,
            1,
            g.consumer_session_timeout_ms.max(1) as u64,
        )?;
        range("groups.share_session_timeout_ms", g.share_session_timeout_ms.max(0) as u64, 1, 3_600_000)?;
        range(
            "groups.share_heartbeat_interval_ms",
            g.share_heartbeat_interval_ms.max(0) as u64,
            1,
            g.share_session_timeout_ms.max(1) as u64,
        )?;
        range("groups.share_record_lock_duration_ms", g.share_record_lock_duration_ms.max(0) as u64, 1_000, 3_600_000)?;
        range("groups.share_delivery_count_limit", g.share_delivery_count_limit.max(0) as u64, 2, 10)?;
        range("groups.share_max_record_locks", g.share_max_record_locks as u64, 100, 100_000)?;
        range("groups.max_share_partitions", g.max_share_partitions as u64, 1, 10_000_000)?;
        range("groups.streams_num_standby_replicas", g.streams_num_standby_replicas.into(), 0, 2)?;
        if self.agent.node_id < 0 {
            return Err(err("agent.node_id", "must not be negative".into()));
        }
        if let Some(adv) = &self.agent.advertised {
            parse_host_port(adv).map_err(|r| err("agent.advertised", r))?;
        }
        if let Some(zone) = &self.agent.zone
            && (zone.is_empty() || zone.len() > 64 || !zone.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(err("agent.zone", format!("{zone:?}: 1 to 64 letters, digits, '-', '_' or '.'")));
        }
        if self.agent.cluster_mode && self.controller.mode != ControllerMode::Remote {
            return Err(err(
                "agent.cluster_mode",
                "needs [controller] mode = \"remote\" (the live agents are known to the controller service)".into(),
            ));
        }
        range("controller.failover_ms", self.controller.failover_ms, 100, 600_000)?;
        range("controller.agent_lease_ms", self.controller.agent_lease_ms, 100, 600_000)?;
        range("controller.call_timeout_ms", self.controller.call_timeout_ms, 10, 600_000)?;
        if self.controller.mode == ControllerMode::Remote && self.controller.addresses.is_empty() {
            return Err(err("controller.addresses", "mode = \"remote\" needs at least one controller address".into()));
        }
        for a in &self.controller.addresses {
            parse_host_port(a).map_err(|r| err("controller.addresses", r))?;
        }
        if let Some(adv) = &self.controller.advertised {
            parse_host_port(adv).map_err(|r| err("controller.advertised", r))?;
        }
        self.validate_security(source_name)?;
        self.validate_link(role).map_err(|(key, reason)| err(&key, reason))?;
        self.object_store_url().map_err(|r| err("object_store.url", r))?;
        if !(0.0..=1.0).contains(&self.object_store.fault_error_rate) {
            return Err(err("object_store.fault_error_rate", "must be between 0.0 and 1.0".into()));
        }
        let store = self.store_url().map_err(|r| err("controller.store", r))?;
        let t = &self.telemetry;
        self.otlp_endpoint().map_err(|r| err("telemetry.otlp_endpoint", r))?;
        if t.service_name.is_empty() || t.service_name.len() > 256 {
            return Err(err("telemetry.service_name", "must be 1 to 256 bytes".into()));
        }
        range("telemetry.metrics_interval_ms", t.metrics_interval_ms, 100, 3_600_000)?;
        range("telemetry.timeout_ms", t.timeout_ms, 10, 600_000)?;
        range("telemetry.max_queued_spans", t.max_queued_spans, 1, 1_000_000)?;
        if !(0.0..=1.0).contains(&t.trace_sample_ratio) {
            return Err(err("telemetry.trace_sample_ratio", format!("{} must be between 0.0 and 1.0", t.trace_sample_ratio)));
        }
        let c = &self.client_telemetry;
        range("client_telemetry.push_interval_ms", c.push_interval_ms, 100, 3_600_000)?;
        range("client_telemetry.max_bytes", c.max_bytes, 1024, 64 << 20)?;
        range("client_telemetry.max_decompressed_bytes", c.max_decompressed_bytes, c.max_bytes, 256 << 20)?;
        range("client_telemetry.max_clients", c.max_clients, 1, 100_000)?;
        range("client_telemetry.max_series_per_client", c.max_series_per_client, 1, 100_000)?;
        if c.metrics.len() > 100 || c.metrics.iter().any(|m| m.is_empty() || m.len() > 256) {
            return Err(err("client_telemetry.metrics", "at most 100 prefixes of 1 to 256 bytes".into()));
        }
        let dir = &self.agent.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| err("agent.data_dir", format!("cannot create {}: {e}", dir.display())))?;
        let probe = dir.join(".write-probe");
        match std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)) {
            Ok(()) => {}
            // Writable but full: the agent starts (its WAL answers KAFKA_STORAGE_ERROR until
            // space is freed, the cache leaves out its disk tier).
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => return Err(err("agent.data_dir", format!("{} is not writable: {e}", dir.display()))),
        }
        if let StoreUrl::Sqlite(db) = &store
            && let Some(parent) = db.parent()
        {
            std::fs::create_dir_all(parent).map_err(|e| err("controller.store", format!("cannot create {}: {e}", parent.display())))?;
        }
        Ok(())
    }

    /// `[[listeners]]`, `[tls]`, `[sasl]`, `[acl]`.
    fn validate_security(&self, source_name: &str) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| ConfigError { source_name: source_name.to_string(), key: key.to_string(), reason };
        if self.agent.listen.is_none() && self.listeners.is_empty() {
            return Err(err("agent.listen", "is off (\"\") and [[listeners]] names no other listener: nothing would serve".into()));
        }
        let mut names = vec![PLAINTEXT_LISTENER];
        for (i, l) in self.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if l.name.is_empty() || l.name.len() > 64 || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err(&format!("{key}.name"), format!("{:?}: 1 to 64 letters, digits or '_'", l.name)));
            }
            if names.contains(&l.name.as_str()) {
                return Err(err(&format!("{key}.name"), format!("{:?} is taken (PLAINTEXT is [agent] listen's)", l.name)));
            }
            names.push(&l.name);
            if self.agent.listen.is_some_and(|a| a == l.address) || self.listeners[..i].iter().any(|o| o.address == l.address) {
                return Err(err(&format!("{key}.address"), format!("{} is another listener's address too", l.address)));
            }
            if let Some(adv) = &l.advertised {
                parse_host_port(adv).map_err(|r| err(&format!("{key}.advertised"), r))?;
            }
            if l.protocol.tls() && (self.tls.cert_file.is_none() || self.tls.key_file.is_none()) {
                return Err(err(
                    "tls.cert_file",
                    format!("listener {} is {}: set [tls] cert_file and key_file", l.name, l.protocol.name()),
                ));
            }
        }
        if self.tls.client_auth != ClientAuth::None && self.tls.client_ca_file.is_none() {
            return Err(err("tls.client_ca_file", "client_auth asks for client certificates: set the CA that verifies them".into()));
        }
        for (key, file) in
            [("tls.cert_file", &self.tls.cert_file), ("tls.key_file", &self.tls.key_file), ("tls.client_ca_file", &self.tls.client_ca_file)]
        {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                return Err(err(key, format!("cannot read {}: {e}", f.display())));
            }
        }
        if self.listeners.iter().any(|l| l.protocol.sasl()) && self.sasl.mechanisms.is_empty() {
            return Err(err("sasl.mechanisms", "a SASL listener needs one mechanism at least".into()));
        }
        for m in &self.sasl.mechanisms {
            if !SASL_MECHANISMS.contains(&m.as_str()) {
                return Err(err("sasl.mechanisms", format!("{m:?} is not one of {}", SASL_MECHANISMS.join(", "))));
            }
        }
        if self.sasl.connections_max_reauth_ms != 0 && self.sasl.connections_max_reauth_ms < 1000 {
            return Err(err("sasl.connections_max_reauth_ms", "0 (no limit) or 1000 and more".into()));
        }
        for p in &self.acl.super_users {
            if !p.contains(':') {
                return Err(err("acl.super_users", format!("{p:?} is not a principal (User:name)")));
            }
        }
        Ok(())
    }

    /// The PEM files of `[controller] tls_*`, read and checked.
    pub fn controller_tls(&self) -> Result<TlsFiles, tls::PemError> {
        let c = &self.controller;
        TlsFiles::load(c.tls_cert_file.as_deref(), c.tls_key_file.as_deref(), c.tls_ca_file.as_deref())
    }

    /// The link between agents and controllers: its PEM files, and what `role` needs of them
    /// and of the token. Errors are (key, reason).
    fn validate_link(&self, role: Role) -> Result<(), (String, String)> {
        let c = &self.controller;
        if c.token.as_ref().is_some_and(|t| t.0.is_empty()) {
            return Err(("controller.token".into(), "is empty: set a secret, or remove the key".into()));
        }
        let tls = self.controller_tls().map_err(|e| (format!("controller.{}", e.key), e.to_string()))?;
        match role {
            Role::Agent if c.mode == ControllerMode::Remote => {
                if tls.has_identity() && !tls.has_ca() {
                    let reason = "an agent presents its certificate (mTLS) only over TLS, which needs tls_ca_file (the CA that verifies the controller)";
                    return Err(("controller.tls_cert_file".into(), reason.into()));
                }
                if tls.has_ca() {
                    for a in &c.addresses {
                        let (host, _) = parse_host_port(a).map_err(|r| ("controller.addresses".to_string(), r))?;
                        tls::check_server_name(&host).map_err(|r| ("controller.addresses".to_string(), r))?;
                    }
                }
            }
            Role::Agent => {}
            Role::Controller => {
                if tls.has_ca() && !tls.has_identity() {
                    let reason = "requiring client certificates (mTLS) needs TLS: set tls_cert_file and tls_key_file too";
                    return Err(("controller.tls_ca_file".into(), reason.into()));
                }
                if !c.listen.ip().is_loopback() && c.token.is_none() && !tls.has_identity() {
                    let reason = format!(
                        "{} is not a loopback address and the controller has neither TLS nor a token, so any host could act as an agent: set [controller] tls_cert_file and tls_key_file (TLS), or token, or both; or listen on a loopback address",
                        c.listen
                    );
                    return Err(("controller.listen".into(), reason));
                }
            }
        }
        Ok(())
    }

    /// Settings that work but are probably not what was meant, as sentences for the log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (host, _) = self.advertised();
        if host == "0.0.0.0" || host == "::" {
            out.push(format!(
                "clients are told to connect to {host}, a wildcard address they cannot reach from another host: set [agent] advertised (SIDESTREAM_AGENT_ADVERTISED)"
            ));
        }
        if self.agent.cluster_mode && matches!(self.object_store_url(), Ok(ObjectStoreUrl::Local(_) | ObjectStoreUrl::Memory)) {
            out.push("cluster mode with a local object store: the other agents cannot read this agent's objects (use s3://)".into());
        }
        out
    }

    /// Where the log lives: `[object_store] url`, else the local directory's `file://` URL
    /// (absolute). The banner prints it; DescribeLogDirs names it as the one log dir.
    pub fn log_dir(&self) -> String {
        self.object_store.url.clone().unwrap_or_else(|| {
            let data_dir = std::path::absolute(&self.agent.data_dir).unwrap_or_else(|_| self.agent.data_dir.clone());
            format!("file://{}", data_dir.join("objects").display())
        })
    }

    /// What clients of the PLAINTEXT listener are told (of the first listener when it is off):
    /// the node's address as the controller registers it.
    pub fn advertised(&self) -> (String, i32) {
        let (advertised, address) = match self.agent.listen {
            Some(listen) => (&self.agent.advertised, listen),
            None => match self.listeners.first() {
                Some(l) => (&l.advertised, l.address),
                None => (&self.agent.advertised, SocketAddr::from(([127, 0, 0, 1], 9092))),
            },
        };
        match advertised {
            Some(a) => parse_host_port(a).unwrap_or_else(|_| (a.clone(), 9092)),
            None => (address.ip().to_string(), address.port().into()),
        }
    }

    pub fn object_store_url(&self) -> Result<ObjectStoreUrl, String> {
        match &self.object_store.url {
            None => Ok(ObjectStoreUrl::Local(self.agent.data_dir.join("objects"))),
            Some(url) if url.starts_with("file://") => {
                let path = &url["file://".len()..];
                if path.is_empty() {
                    return Err("file:// needs a path, e.g. file:///var/lib/sidestream/objects".into());
                }
                Ok(ObjectStoreUrl::Local(PathBuf::from(path)))
            }
            Some(url) if url == "memory://" => Ok(ObjectStoreUrl::Memory),
            Some(url) if url.starts_with("s3://") => {
                let rest = &url["s3://".len()..];
                let (bucket, root) = rest.split_once('/').unwrap_or((rest, ""));
                let bucket_ok = (3..=63).contains(&bucket.len())
                    && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
                if !bucket_ok {
                    return Err(format!("{url:?}: bucket {bucket:?} is not a valid bucket name (3-63 of a-z, 0-9, '-', '.')"));
                }
                let root = root.trim_matches('/');
                if !root.is_empty() && !crate::format::object::valid_key(root) {
                    return Err(format!("{url:?}: the path {root:?} may only hold a-z, A-Z, 0-9, '-', '_', '.', '/'"));
                }
                Ok(ObjectStoreUrl::S3 { bucket: bucket.to_string(), root: root.to_string() })
            }
            Some(url) => Err(format!("unsupported object store url {url:?}: use s3://bucket/path or file:///path")),
        }
    }

    /// `[telemetry] otlp_endpoint` parsed: None when empty (export off). Only `http://` is
    /// spoken (run a collector next to the agent for TLS to a remote one).
    pub fn otlp_endpoint(&self) -> Result<Option<OtlpEndpoint>, String> {
        let url = self.telemetry.otlp_endpoint.trim();
        if url.is_empty() {
            return Ok(None);
        }
        if url.starts_with("https://") {
            return Err(format!(
                "{url:?}: https is not supported; export to a collector on http:// (e.g. an OpenTelemetry Collector on the same host, which forwards over TLS)"
            ));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!("{url:?} must start with http:// (OTLP/HTTP, e.g. http://127.0.0.1:4318)"));
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        // host, host:port, [v6] or [v6]:port; OTLP/HTTP's port (4318) when none is given.
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !authority.ends_with(']') => (h, p.parse::<u16>().map_err(|_| format!("{url:?} has no valid port"))?),
            _ => (authority, 4318),
        };
        let host = host.trim_matches(|c| c == '[' || c == ']');
        if host.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no host (http://host:port)"));
        }
        let path = path.trim_end_matches('/');
        Ok(Some(OtlpEndpoint { host: host.to_string(), port, path: if path.is_empty() { String::new() } else { format!("/{path}") } }))
    }

    pub fn store_url(&self) -> Result<StoreUrl, String> {
        match &self.controller.store {
            None => Ok(StoreUrl::Sqlite(self.agent.data_dir.join("controller.db"))),
            Some(url) if url.starts_with("sqlite://") && url.len() > "sqlite://".len() => {
                Ok(StoreUrl::Sqlite(PathBuf::from(&url["sqlite://".len()..])))
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                url.parse::<postgres::Config>().map_err(|e| format!("{url:?} is not a valid PostgreSQL URL: {e}"))?;
                Ok(StoreUrl::Postgres(url.clone()))
            }
            Some(url) => Err(format!("unsupported store url {url:?}: use sqlite:///path or postgres://...")),
        }
    }
}

/// An address that may be turned off: `""` in the file is `None`.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an address (ip:port), nor \"\" (off)")))
    }
}

pub(crate) fn parse_host_port(s: &str) -> Result<(String, i32), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{s:?} has no valid port"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_string(), port.into()))
}

/// Applies `SIDESTREAM_<SECTION>_<KEY>` variables to `table`. A value is parsed as the type the
/// key has in the defaults (integer, boolean), and kept as a string otherwise. Returns the dotted
/// keys it set with the variable that set them, so errors can name the variable.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<(String, String)>, ConfigError> {
    let defaults = toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Table(Default::default()));
    let mut set = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().filter(|s| rest.starts_with(&format!("{s}_"))).max_by_key(|s| s.len()) else {
            if is_tool_variable(&var) {
                continue;
            }
            // A variable naming no setting stops the start-up, like an unknown key in the file.
            let reason = format!("no setting is named so (SIDESTREAM_<SECTION>_<KEY>; sections: {})", SECTIONS.join(", "));
            return Err(ConfigError { source_name: format!("environment variable {var}"), key: rest, reason });
        };
        let key = &rest[section.len() + 1..];
        let bad =
            |reason: String| ConfigError { source_name: format!("environment variable {var}"), key: format!("{section}.{key}"), reason };
        let value = match defaults.get(section).and_then(|s| s.get(key)) {
            Some(toml::Value::Integer(_)) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| bad(format!("{raw:?} is not an integer")))?)
            }
            Some(toml::Value::Boolean(_)) => {
                toml::Value::Boolean(raw.trim().parse().map_err(|_| bad(format!("{raw:?} is not true or false")))?)
            }
            // Lists (e.g. controller.addresses): comma-separated.
            Some(toml::Value::Array(_)) => {
                toml::Value::Array(raw.split(',').map(str::trim).filter(|a| !a.is_empty()).map(|a| toml::Value::String(a.into())).collect())
            }
            Some(toml::Value::Float(_)) => toml::Value::Float(raw.trim().parse().map_err(|_| bad(format!("{raw:?} is not a number")))?),
            _ => toml::Value::String(raw.clone()),
        };
        let section_table = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        match section_table {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
            }
            _ => return Err(bad(format!("[{section}] in the file is not a table"))),
        }
        set.push((format!("{section}.{key}"), var.clone()));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_variable_naming_no_setting_stops_the_start_up() {
        let e = Config::load(None, env(&[("SIDESTREAM_TSL_CERT_FILE", "/etc/cert.pem")])).unwrap_err();
        assert_eq!(e.source_name, "environment variable SIDESTREAM_TSL_CERT_FILE");
        assert!(e.reason.contains("no setting is named so"), "{e}");
        let e = Config::load(None, env(&[("SIDESTREAM_AGNET_LISTEN", "127.0.0.1:1")])).unwrap_err();
        assert!(e.reason.contains("no setting is named so"), "{e}");
        // An unknown key of a known section is refused by the schema, as in the file.
        let e = Config::load(None, env(&[("SIDESTREAM_AGENT_LISTN", "127.0.0.1:1")])).unwrap_err();
        assert_eq!(e.source_name, "environment variable SIDESTREAM_AGENT_LISTN");
        // The test tools' own variables pass.
        let d = tempfile::tempdir().unwrap();
        let d = d.path().to_str().unwrap();
        Config::load(None, env(&[("SIDESTREAM_BIN", "x"), ("SIDESTREAM_TEST_SEED", "1"), ("SIDESTREAM_AGENT_DATA_DIR", d)])).unwrap();
    }

    #[test]
    fn warnings_for_a_wildcard_advertised_and_a_local_store_in_cluster_mode() {
        let mut c = Config::default();
        assert!(c.warnings().is_empty());
        c.agent.listen = Some("0.0.0.0:9092".parse().unwrap());
        assert!(c.warnings()[0].contains("wildcard"), "{:?}", c.warnings());
        c.agent.advertised = Some("kafka.example:9092".into());
        c.agent.cluster_mode = true;
        let w = c.warnings();
        assert!(w.len() == 1 && w[0].contains("cluster mode with a local object store"), "{w:?}");
        c.object_store.url = Some("s3://bucket/root".into());
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn store_settings_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let load = |key: &str, v: &str| Config::load(None, env(&[("SIDESTREAM_AGENT_DATA_DIR", d), (key, v)]));
        let cfg = load("SIDESTREAM_CONTROLLER_STORE_STATEMENT_TIMEOUT_MS", "2500").unwrap();
        assert_eq!(cfg.controller.store_statement_timeout_ms, 2500);
        let e = load("SIDESTREAM_CONTROLLER_STORE_READ_CONNECTIONS", "0").unwrap_err().to_string();
        assert!(e.contains("controller.store_read_connections"), "{e}");
        assert!(load("SIDESTREAM_CONTROLLER_STORE_CONNECT_TIMEOUT_MS", "1").is_err());
    }

    #[test]
    fn telemetry_endpoint_is_http_only_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let load = |pairs: &[(&str, &str)]| {
            let mut all = vec![("SIDESTREAM_AGENT_DATA_DIR", d)];
            all.extend_from_slice(pairs);
            Config::load(None, env(&all))
        };
        assert_eq!(load(&[]).unwrap().otlp_endpoint().unwrap(), None, "off by default");
        let cfg =
            load(&[("SIDESTREAM_TELEMETRY_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("SIDESTREAM_TELEMETRY_TRACE_SAMPLE_RATIO", "1")])
                .unwrap();
        assert_eq!(cfg.telemetry.trace_sample_ratio, 1.0);
        let ep = |url: &str| {
            let mut c = Config::default();
            c.telemetry.otlp_endpoint = url.into();
            c.otlp_endpoint()
        };
        let at = |host: &str, port, path: &str| Ok(Some(OtlpEndpoint { host: host.into(), port, path: path.into() }));
        assert_eq!(ep("http://127.0.0.1:4318"), at("127.0.0.1", 4318, ""));
        assert_eq!(ep("http://collector/otlp/"), at("collector", 4318, "/otlp"));
        assert_eq!(ep("http://[::1]:9000"), at("::1", 9000, ""));
        assert_eq!(ep("http://[::1]"), at("::1", 4318, ""));
        assert!(ep("https://collector:4318").unwrap_err().contains("https is not supported"));
        assert!(ep("grpc://collector:4317").is_err());
        assert!(ep("http://:4318").is_err());
        assert!(ep("http://host:port").is_err());
        let e = load(&[("SIDESTREAM_TELEMETRY_OTLP_ENDPOINT", "https://otel.example.com")]).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.source_name.as_str()),
            ("telemetry.otlp_endpoint", "environment variable SIDESTREAM_TELEMETRY_OTLP_ENDPOINT")
        );
        assert!(load(&[("SIDESTREAM_TELEMETRY_TRACE_SAMPLE_RATIO", "1.5")]).is_err());
        assert!(load(&[("SIDESTREAM_TELEMETRY_MAX_QUEUED_SPANS", "0")]).is_err());
        assert!(load(&[("SIDESTREAM_TELEMETRY_OTLP_ENDPONT", "http://x")]).is_err(), "unknown key");
    }

    #[test]
    fn client_telemetry_settings_from_the_environment_and_their_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        let load = |pairs: &[(&str, &str)]| {
            let mut all = vec![("SIDESTREAM_AGENT_DATA_DIR", data)];
            all.extend_from_slice(pairs);
            Config::load(None, env(&all))
        };
        let cfg = load(&[
            ("SIDESTREAM_CLIENT_TELEMETRY_ENABLED", "true"),
            ("SIDESTREAM_CLIENT_TELEMETRY_METRICS", "org.apache.kafka.producer.,org.apache.kafka.consumer."),
            ("SIDESTREAM_CLIENT_TELEMETRY_PUSH_INTERVAL_MS", "1000"),
        ])
        .unwrap();
        assert!(cfg.client_telemetry.enabled);
        assert_eq!(cfg.client_telemetry.metrics, ["org.apache.kafka.producer.", "org.apache.kafka.consumer."]);
        assert_eq!(cfg.client_telemetry.push_interval_ms, 1000);
        assert!(load(&[("SIDESTREAM_CLIENT_TELEMETRY_PUSH_INTERVAL_MS", "10")]).is_err());
        assert!(load(&[("SIDESTREAM_CLIENT_TELEMETRY_MAX_CLIENTS", "0")]).is_err());
        // Decompressed payloads may not be bounded below compressed ones.
        assert!(load(&[("SIDESTREAM_CLIENT_TELEMETRY_MAX_DECOMPRESSED_BYTES", "1024")]).is_err());
    }

    #[test]
    fn proxy_toml_is_exactly_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
        // And it loads (validation passes) once data_dir points somewhere writable.
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, &text).unwrap();
        let data = dir.path().join("data");
        let cfg = Config::load(Some(&path), env(&[("SIDESTREAM_AGENT_DATA_DIR", data.to_str().unwrap())])).unwrap();
        assert_eq!(cfg.agent.data_dir, data);
    }

    #[test]
    fn env_overrides_typed_values_and_sections_with_underscores() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let cfg = Config::load(
            None,
            env(&[
                ("SIDESTREAM_AGENT_LISTEN", "127.0.0.1:19092"),
                ("SIDESTREAM_AGENT_DATA_DIR", d),
                ("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS", "20"),
                ("SIDESTREAM_OBJECT_STORE_URL", "memory://"),
                ("SIDESTREAM_TOPICS_AUTO_CREATE", "false"),
                ("SIDESTREAM_WAL_SYNC", "none"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.agent.listen, Some("127.0.0.1:19092".parse().unwrap()));
        assert_eq!(cfg.upload.flush_interval_ms, 20);
        assert_eq!(cfg.object_store_url().unwrap(), ObjectStoreUrl::Memory);
        assert!(!cfg.topics.auto_create);
        assert_eq!(cfg.wal.sync, WalSync::None);
        assert_eq!(cfg.advertised(), ("127.0.0.1".to_string(), 19092));
    }

    #[test]
    fn s3_settings_parse_from_url_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let cfg = Config::load(
            None,
            env(&[
                ("SIDESTREAM_AGENT_DATA_DIR", d),
                ("SIDESTREAM_OBJECT_STORE_URL", "s3://my-bucket/kafka/prod/"),
                ("SIDESTREAM_OBJECT_STORE_ENDPOINT", "http://127.0.0.1:9000"),
                ("SIDESTREAM_OBJECT_STORE_PATH_STYLE", "true"),
                ("SIDESTREAM_OBJECT_STORE_ACCESS_KEY_ID", "key"),
                ("SIDESTREAM_OBJECT_STORE_SECRET_ACCESS_KEY", "secret"),
                ("SIDESTREAM_OBJECT_STORE_ORPHAN_GRACE_MS", "1000"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.object_store_url().unwrap(), ObjectStoreUrl::S3 { bucket: "my-bucket".into(), root: "kafka/prod".into() });
        assert!(cfg.object_store.path_style);
        assert_eq!(cfg.object_store.orphan_grace_ms, 1000);
        assert!(!format!("{cfg:?}").contains("secret\""), "the secret key is never printed");
        let bare = Config { object_store: ObjectStoreConfig { url: Some("s3://bucket".into()), ..Default::default() }, ..cfg };
        assert_eq!(bare.object_store_url().unwrap(), ObjectStoreUrl::S3 { bucket: "bucket".into(), root: String::new() });
    }

    #[test]
    fn cluster_mode_needs_a_remote_controller_and_zones_are_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let e = Config::load(None, env(&[("SIDESTREAM_AGENT_DATA_DIR", d), ("SIDESTREAM_AGENT_CLUSTER_MODE", "true")])).unwrap_err();
        assert_eq!(e.key, "agent.cluster_mode");
        let remote = [
            ("SIDESTREAM_AGENT_DATA_DIR", d),
            ("SIDESTREAM_AGENT_CLUSTER_MODE", "true"),
            ("SIDESTREAM_CONTROLLER_MODE", "remote"),
            ("SIDESTREAM_CONTROLLER_ADDRESSES", "127.0.0.1:9093"),
        ];
        let cfg = Config::load(None, env(&[&remote[..], &[("SIDESTREAM_AGENT_ZONE", "us-east-1a")]].concat())).unwrap();
        assert!(cfg.agent.cluster_mode);
        assert_eq!(cfg.agent.zone.as_deref(), Some("us-east-1a"));
        let e = Config::load(None, env(&[&remote[..], &[("SIDESTREAM_AGENT_ZONE", "a,b")]].concat())).unwrap_err();
        assert_eq!(e.key, "agent.zone");
    }

    #[test]
    fn a_controller_beyond_loopback_needs_tls_or_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let load = |role, vars: &[(&str, &str)]| Config::load_for(role, None, env(&[&[("SIDESTREAM_AGENT_DATA_DIR", d)], vars].concat()));
        load(Role::Controller, &[]).unwrap();
        load(Role::Controller, &[("SIDESTREAM_CONTROLLER_LISTEN", "[::1]:9093")]).unwrap();
        for listen in ["0.0.0.0:9093", "[::]:9093", "10.1.2.3:9093"] {
            let e = load(Role::Controller, &[("SIDESTREAM_CONTROLLER_LISTEN", listen)]).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.source_name.as_str()),
                ("controller.listen", "environment variable SIDESTREAM_CONTROLLER_LISTEN")
            );
            assert!(e.reason.contains("tls_cert_file and tls_key_file") && e.reason.contains("token"), "{e}");
        }
        load(Role::Controller, &[("SIDESTREAM_CONTROLLER_LISTEN", "0.0.0.0:9093"), ("SIDESTREAM_CONTROLLER_TOKEN", "t")]).unwrap();
        // The rule is the controller's: an agent does not listen on [controller] listen.
        load(Role::Agent, &[("SIDESTREAM_CONTROLLER_LISTEN", "0.0.0.0:9093")]).unwrap();
        let e = load(Role::Agent, &[("SIDESTREAM_CONTROLLER_TOKEN", "")]).unwrap_err();
        assert_eq!(e.key, "controller.token");
    }

    #[test]
    fn tls_files_are_checked_for_what_each_role_does_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        if crate::api::tls::testing::openssl_files(&tls).is_none() {
            eprintln!("openssl not available: skipped");
            return;
        }
        let file = |name: &str| tls.join(name).to_str().unwrap().to_string();
        let (server, server_key, client, client_key, ca) =
            (file("server.pem"), file("server.key"), file("client.pem"), file("client.key"), file("ca.pem"));
        let load = |role, vars: &[(&str, &str)]| Config::load_for(role, None, env(&[&[("SIDESTREAM_AGENT_DATA_DIR", d)], vars].concat()));
        fn identity<'a>(cert: &'a str, key: &'a str) -> [(&'static str, &'a str); 2] {
            [("SIDESTREAM_CONTROLLER_TLS_CERT_FILE", cert), ("SIDESTREAM_CONTROLLER_TLS_KEY_FILE", key)]
        }
        let with_ca = [("SIDESTREAM_CONTROLLER_TLS_CA_FILE", ca.as_str())];
        let remote = [("SIDESTREAM_CONTROLLER_MODE", "remote"), ("SIDESTREAM_CONTROLLER_ADDRESSES", "127.0.0.1:9093")];

        // A controller over TLS beyond loopback, with mTLS; an agent with its CA and client certificate.
        let open = [("SIDESTREAM_CONTROLLER_LISTEN", "0.0.0.0:9093")];
        let cfg = load(Role::Controller, &[&open[..], &identity(&server, &server_key), &with_ca].concat()).unwrap();
        assert_eq!(cfg.controller.tls_cert_file.as_deref(), Some(tls.join("server.pem").as_path()));
        assert!(cfg.controller_tls().unwrap().server().is_some());
        let cfg = load(Role::Agent, &[&remote[..], &identity(&client, &client_key), &with_ca].concat()).unwrap();
        assert!(cfg.controller_tls().unwrap().client().is_some());

        // A file that is not there: the variable, the key and the file.
        let e = load(Role::Controller, &identity("/nonexistent/c.pem", &server_key)).unwrap_err();
        assert_eq!(e.source_name, "environment variable SIDESTREAM_CONTROLLER_TLS_CERT_FILE");
        assert_eq!(e.key, "controller.tls_cert_file");
        assert!(e.reason.contains("/nonexistent/c.pem") && e.reason.contains("cannot read"), "{e}");
        let e = load(Role::Controller, &identity(&server, &client_key)).unwrap_err();
        assert_eq!(e.key, "controller.tls_key_file");
        // A client certificate without a CA (the agent would not use TLS); a controller's CA
        // without its own certificate (it would not serve TLS).
        let e = load(Role::Agent, &[&remote[..], &identity(&client, &client_key)].concat()).unwrap_err();
        assert!(e.key == "controller.tls_cert_file" && e.reason.contains("tls_ca_file"), "{e}");
        let e = load(Role::Controller, &with_ca).unwrap_err();
        assert!(e.key == "controller.tls_ca_file" && e.reason.contains("tls_cert_file"), "{e}");
        // Over TLS, every address's host must be a name or an IP a certificate can carry.
        let bad_host = [("SIDESTREAM_CONTROLLER_MODE", "remote"), ("SIDESTREAM_CONTROLLER_ADDRESSES", "bad host:9093")];
        let e = load(Role::Agent, &[&bad_host[..], &with_ca].concat()).unwrap_err();
        assert_eq!(e.key, "controller.addresses");
    }

    #[test]
    fn errors_name_the_source_the_key_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let path = dir.path().join("bad.toml");

        std::fs::write(&path, "[agent]\nlisten = 5\n").unwrap();
        let e = Config::load(Some(&path), env(&[("SIDESTREAM_AGENT_DATA_DIR", &d)])).unwrap_err();
        assert_eq!(e.key, "agent.listen");
        assert!(e.source_name.ends_with("bad.toml"), "{e}");

        std::fs::write(&path, "[agent]\nlisten_typo = \"x\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(e.reason.contains("unknown field `listen_typo`"), "{e}");

        let e = Config::load(None, env(&[("SIDESTREAM_UPLOAD_FLUSH_BYTES", "lots")])).unwrap_err();
        assert_eq!(e.key, "upload.flush_bytes");
        assert_eq!(e.source_name, "environment variable SIDESTREAM_UPLOAD_FLUSH_BYTES");

        let e = Config::load(None, env(&[("SIDESTREAM_AGENT_LISTEN", "nope"), ("SIDESTREAM_AGENT_DATA_DIR", &d)])).unwrap_err();
        assert_eq!(e.source_name, "environment variable SIDESTREAM_AGENT_LISTEN");

        let e = Config::load(None, env(&[("SIDESTREAM_AGENT_DATA_DIR", "/proc/nope/data")])).unwrap_err();
        assert_eq!(e.key, "agent.data_dir");

        let e = Config::load(None, env(&[("SIDESTREAM_OBJECT_STORE_URL", "s3://B_ad/p"), ("SIDESTREAM_AGENT_DATA_DIR", &d)])).unwrap_err();
        assert_eq!(e.key, "object_store.url");
        assert!(e.reason.contains("not a valid bucket name"), "{e}");

        let e = Config::load(None, env(&[("SIDESTREAM_OBJECT_STORE_ACCESS_KEY_ID", "k"), ("SIDESTREAM_AGENT_DATA_DIR", &d)])).unwrap_err();
        assert_eq!(e.key, "object_store.access_key_id");

        std::fs::write(&path, "[agent\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(e.reason.contains("line 1, column"), "{e}");

        std::fs::write(&path, "[tls]\ncert = \"x\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(e.reason.contains("unknown field `cert`"), "{e}");

        // A TLS listener needs a certificate; SASL listeners a mechanism; names are unique.
        std::fs::write(
            &path,
            format!("[agent]\ndata_dir = {d:?}\n[[listeners]]\nname = \"EXT\"\naddress = \"127.0.0.1:0\"\nprotocol = \"SSL\"\n"),
        )
        .unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert_eq!(e.key, "tls.cert_file");
        std::fs::write(
            &path,
            format!(
                "[agent]\ndata_dir = {d:?}\n[[listeners]]\nname = \"PLAINTEXT\"\naddress = \"127.0.0.1:1\"\nprotocol = \"SASL_PLAINTEXT\"\n"
            ),
        )
        .unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert_eq!(e.key, "listeners[0].name");
        std::fs::write(&path, format!("[agent]\ndata_dir = {d:?}\nlisten = \"\"\n[sasl]\nmechanisms = [\"GSSAPI\"]\n")).unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert_eq!(e.key, "agent.listen");
        std::fs::write(&path, format!("[agent]\ndata_dir = {d:?}\n[sasl]\nmechanisms = [\"GSSAPI\"]\n")).unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert_eq!(e.key, "sasl.mechanisms");
        std::fs::write(&path, format!("[agent]\ndata_dir = {d:?}\nlisten = \"\"\n[[listeners]]\nname = \"EXT\"\naddress = \"127.0.0.1:0\"\nprotocol = \"SASL_PLAINTEXT\"\n")).unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!((c.agent.listen, c.listeners[0].protocol), (None, SecurityProtocol::SaslPlaintext));

        let e = Config::load(None, env(&[("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS", "0")])).unwrap_err();
        assert_eq!(e.key, "upload.flush_interval_ms");
        assert_eq!(e.source_name, "environment variable SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS");
    }
}
