//! The agent: the per-host sidecar's data path, between the Kafka protocol and object storage.
//!
//! - [`produce`]: checks a producer's batch and hands it to the upload buffer.
//! - [`wal`]: the local write-ahead log that makes acks=1 durable before its object exists.
//! - [`upload`]: collects batches of many partitions into one object, uploads it, commits it to
//!   the controller (which assigns offsets) and answers the producers.
//! - [`fetch`]: finds the object ranges holding an offset, reads them, patches the assigned
//!   offsets into the batch headers.
//! - [`txn`]: EndTxn and transactional InitProducerId (markers through the uploader); the
//!   transaction timeout job.
//! - [`quota`]: client quotas (produce and fetch bytes, request time, partition mutations):
//!   whose rate is over which quota, and for how long to throttle.
//! - [`cost`]: object-store requests and bytes by topic, on `/metrics`.
//! - [`orphans`]: the background job deleting objects that were uploaded but never committed.
//! - [`jobs`]: background jobs leased from the controller: retention, the object collector.
//! - [`cluster`]: which broker clients are told leads each partition (sidecar or cluster mode).
//! - [`acl`]: the authorizer: Kafka's ACL rules over the controller's ACLs.
//! - [`broker_config`]: the broker's own configs under Kafka's names; the log filter is the one
//!   that changes at run time.
//! - [`client_telemetry`]: KIP-714 client metrics: the subscription clients get, the bounded
//!   series they push, shown on `/metrics`.
//! - [`internal_topics`]: Kafka's `__consumer_offsets` and `__transaction_state`, empty here,
//!   created when a client first needs one.
//!
//! Must not touch: Kafka request/response types (that is `protocol/`), the store's SQL (that is
//! the controller's), object key layout (that is `object/keys`).

pub mod acl;
pub mod broker_config;
pub mod cache;
pub mod client;
pub mod client_telemetry;
pub mod cluster;
pub mod compaction;
pub mod cost;
pub mod fetch;
pub mod fetch_session;
pub mod internal_topics;
pub mod jobs;
pub mod orphans;
pub mod produce;
pub mod quota;
pub mod share_session;
pub mod txn;
pub mod upload;
pub mod wal;

use std::sync::Arc;

use crate::agent::client::ControllerClient;
use crate::api::ControllerError;
use crate::config::TopicsConfig;
use crate::format::records::RecordsError;
use crate::object::{ObjectError, ObjectStore};
use upload::Uploader;
use wal::Wal;

/// What the agent needs to know about itself.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_id: i32,
    pub topics: TopicsConfig,
    /// `[agent] cluster_mode`: Metadata lists the live agents (see [`cluster`]).
    pub cluster_mode: bool,
    pub zone: Option<String>,
    /// `[agent] max_decompressed_batch_bytes`: the bound of produce validation.
    pub max_decompressed_batch_bytes: usize,
    /// `[agent] fetch_max_wait_ms_max`: the longest Fetch long poll.
    pub fetch_max_wait_ms_max: u64,
    /// The object store's URL: the one "log dir" DescribeLogDirs reports.
    pub log_dir: String,
}

/// The agent's components, shared by every connection.
pub struct Agent {
    pub settings: AgentSettings,
    pub controller: Arc<dyn ControllerClient>,
    pub store: Arc<dyn ObjectStore>,
    /// Record timestamps are checked against it.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Client quota enforcement: who is over which quota ([`quota`]).
    pub quotas: quota::Quotas,
    /// Fetches read objects through this cache.
    pub cache: Arc<cache::ReadCache>,
    pub uploader: Uploader,
    pub wal: Wal,
    /// Produce requests not yet handed to the uploader; shutdown waits for them.
    pub hand_offs: HandOffs,
    /// Producers whose EndTxn must first wait for their acks=0/1 batches' commit.
    pub txn_unflushed: txn::UnflushedProducers,
    /// Fetch sessions (KIP-227) of the agent's consumers.
    pub fetch_sessions: crate::agent::fetch_session::FetchSessions,
    /// Share sessions (KIP-932) of the agent's share consumers.
    pub share_sessions: share_session::ShareSessions,
    /// Decides every request from the controller's ACLs (`[acl]`).
    pub authorizer: acl::Authorizer,
    /// The broker's configs (DescribeConfigs, AlterConfigs of the BROKER resources).
    pub broker_configs: broker_config::BrokerConfigs,
    /// Kafka's internal topics, created on first need.
    pub internal_topics: internal_topics::InternalTopics,
    /// Metrics clients push (KIP-714).
    pub client_telemetry: Arc<client_telemetry::ClientTelemetry>,
}

/// Counts produce requests between their arrival and the hand-off of their batches to the
/// uploader (directly, or through the WAL), so a graceful shutdown can close the uploader only
/// once everything accepted is in it.
#[derive(Debug)]
pub struct HandOffs(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for HandOffs {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

/// Held by a produce request from the moment it is read until its batches are handed off.
pub struct HandOffGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl HandOffs {
    pub fn enter(&self) -> HandOffGuard {
        self.0.send_modify(|n| *n += 1);
        HandOffGuard(self.0.clone())
    }

    /// Returns once no produce request is between arrival and hand-off.
    pub async fn idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for HandOffGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A request's place in its connection's order. [`Turn::wait`] returns once the previous
/// request of the same chain (produce requests: queued its batches; offset commits: answered)
/// is done; dropping the turn lets the next one go.
pub struct Turn {
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Counted from the moment the request is read, so shutdown waits for it.
    pub hand_off: Option<HandOffGuard>,
}

impl Turn {
    /// The turn of a connection's next request of a chain, after `last` (which it replaces);
    /// `hand_off` for produce requests.
    pub fn next(last: &mut Option<tokio::sync::oneshot::Receiver<()>>, hand_off: Option<HandOffGuard>) -> Turn {
        let (done, next) = tokio::sync::oneshot::channel();
        Turn { previous: last.replace(next), done: Some(done), hand_off }
    }

    pub async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the previous handler is gone, which also ends its turn.
            let _ = previous.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else { return };
        match self.previous.take() {
            None => {
                let _ = done.send(());
            }
            // Dropped before its turn came (e.g. an undecodable request): the next one still
            // waits for the previous one.
            Some(previous) => {
                tokio::spawn(async move {
                    let _ = previous.await;
                    let _ = done.send(());
                });
            }
        }
    }
}

/// Errors of the agent's data path; `protocol::error` maps each to one Kafka error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: i64 },
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset {offset} out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange { offset: i64, log_start: i64, high_watermark: i64 },
    #[error("request timed out")]
    Timeout,
    #[error("agent is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    ObjectStore(#[from] ObjectError),
    /// The write-ahead log cannot be written.
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// A stored object does not match what the controller recorded: never served.
    #[error("corrupt object data: {0}")]
    CorruptObject(String),
}
