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

use crate::agent::upload::{UploadDeps, UploadSettings, Uploader};
use crate::agent::{Agent, AgentSettings};
use crate::clock::{Clock, Entropy, SeededEntropy, SystemClock};
use crate::config::{Config, ObjectStoreUrl, StoreUrl};
use crate::controller::client::{ControllerClient, InProcess};
use crate::controller::store::sqlite::SqliteStore;
use crate::controller::{Controller, ControllerError};
use crate::object::local::LocalStore;
use crate::object::memory::MemoryStore;
use crate::object::{ObjectError, ObjectStore};
use crate::protocol::connection::{self, ConnectionLimits};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("object store: {0}")]
    ObjectStore(#[from] ObjectError),
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    #[error("metadata store: {0}")]
    Store(#[from] crate::controller::store::StoreError),
    #[error("configuration: {0}")]
    Config(String),
}

/// A running agent (with its embedded controller).
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub agent: Arc<Agent>,
    shutdown: CancellationToken,
    accept: JoinHandle<()>,
    shutdown_timeout: Duration,
}

/// Builds the components and starts listening.
pub async fn start(config: &Config) -> Result<RunningServer, ServerError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let entropy: Arc<dyn Entropy> = Arc::new(SeededEntropy::from_os());
    let store: Arc<dyn ObjectStore> = match config.object_store_url().map_err(ServerError::Config)? {
        ObjectStoreUrl::Local(path) => Arc::new(LocalStore::open(path)?),
        ObjectStoreUrl::Memory => Arc::new(MemoryStore::new()),
    };
    let StoreUrl::Sqlite(db) = config.store_url().map_err(ServerError::Config)?;
    let metadata = tokio::task::spawn_blocking(move || SqliteStore::open(&db))
        .await
        .map_err(|e| ServerError::Config(e.to_string()))??;
    let controller = Controller::open_with_groups(
        Arc::new(metadata),
        config.topics.clone(),
        config.groups.clone(),
        clock.clone(),
        entropy.clone(),
    )?;
    let controller: Arc<dyn ControllerClient> = Arc::new(InProcess(Arc::new(controller)));

    let listener = TcpListener::bind(config.agent.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.agent.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.agent.listen, source })?;
    let (advertised_host, mut advertised_port) = config.advertised();
    if config.agent.advertised.is_none() {
        // Listening on port 0 (tests): advertise the port actually bound.
        advertised_port = local_addr.port().into();
    }

    let uploader = Uploader::start(
        UploadSettings {
            flush_interval: Duration::from_millis(config.upload.flush_interval_ms),
            flush_bytes: config.upload.flush_bytes,
            buffer_bytes_max: config.upload.buffer_bytes_max,
            max_in_flight_objects: config.upload.max_in_flight_objects as usize,
            agent: format!("agent-{}", config.agent.node_id),
            key_prefix: String::new(),
        },
        UploadDeps { store: store.clone(), controller: controller.clone(), clock, entropy },
    );
    let agent = Arc::new(Agent {
        settings: AgentSettings {
            node_id: config.agent.node_id,
            advertised_host,
            advertised_port,
            topics: config.topics.clone(),
        },
        controller,
        store,
        uploader,
    });
    let limits = ConnectionLimits {
        max_request_bytes: config.agent.max_request_bytes,
        max_connections: config.agent.max_connections as usize,
        max_in_flight_requests: config.agent.max_in_flight_requests as usize,
    };
    let shutdown = CancellationToken::new();
    let accept = tokio::spawn(connection::serve(listener, agent.clone(), limits, shutdown.clone()));
    tracing::info!(%local_addr, "sidestream agent listening");
    Ok(RunningServer {
        local_addr,
        agent,
        shutdown,
        accept,
        shutdown_timeout: Duration::from_millis(config.agent.shutdown_timeout_ms),
    })
}

impl RunningServer {
    /// Stops accepting, answers what was read, uploads and commits everything buffered.
    /// Returns false if that did not finish within `shutdown_timeout_ms`.
    pub async fn shutdown(self) -> bool {
        self.shutdown.cancel();
        let agent = self.agent.clone();
        let accept = self.accept;
        let drained = async move {
            let _ = accept.await;
            agent.uploader.close().await;
        };
        let clean = tokio::time::timeout(self.shutdown_timeout, drained).await.is_ok();
        if clean {
            tracing::info!("shutdown complete: every accepted batch is committed");
        } else {
            tracing::error!(timeout = ?self.shutdown_timeout, "shutdown timed out with uncommitted data");
        }
        clean
    }
}
