//! Transactions: the agent's half of the transaction coordinator.
//!
//! The controller decides a transaction's outcome (`controller::txn`); the agent writes it into
//! the log: one small object holding one control batch (commit or abort marker) per partition
//! of the transaction, sealed by the uploader after everything this agent accepted before it and
//! committed through the same commit path as data, with `txn_end` set
//! ([`super::upload::Uploader::write_markers`]). The commit gives each marker an offset after the
//! transaction's data and completes the transaction in the same store transaction.
//!
//! - [`Agent::end_txn`]: EndTxn, the coordinator's decision then its markers.
//! - [`Agent::init_transactional_producer`]: InitProducerId with a transactional id; a
//!   transaction the previous producer left open is finished first, as Kafka's coordinator does.
//! - [`TxnTimer`]: the background job that aborts transactions older than their timeout and
//!   finishes any whose markers were not committed (an agent crash, a failed PUT).
//!
//! Must not touch: Kafka request/response types, the store's SQL.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::upload::Uploader;
use super::{Agent, AgentError};
use crate::agent::client::ControllerClient;
use crate::api::ControllerError;
use crate::api::txn::TxnInit;

/// How long EndTxn (or InitProducerId finishing a previous transaction) waits for the markers'
/// commit; past it the client is told to retry (the markers still commit).
const MARKERS_WAIT: Duration = Duration::from_secs(30);
/// Previous transactions finished before InitProducerId tells the client to retry
/// (CONCURRENT_TRANSACTIONS): one abort, one more for a concurrent retry.
const FINISH_ATTEMPTS_MAX: usize = 3;

/// Producers (ids) with transactional batches accepted with acks=0/1, whose commit may still
/// be under way: their EndTxn first waits for the uploader ([`Uploader::barrier`]), so those
/// batches are committed while the transaction is still ongoing. Bounded: past
/// [`UNFLUSHED_PRODUCERS_MAX`] every EndTxn waits.
#[derive(Debug, Default)]
pub struct UnflushedProducers {
    ids: std::sync::Mutex<std::collections::HashSet<i64>>,
    overflowed: std::sync::atomic::AtomicBool,
}

/// Producer ids remembered by [`UnflushedProducers`].
const UNFLUSHED_PRODUCERS_MAX: usize = 65_536;

impl UnflushedProducers {
    pub fn insert(&self, producer_id: i64) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() < UNFLUSHED_PRODUCERS_MAX {
            ids.insert(producer_id);
        } else if !ids.contains(&producer_id) {
            self.overflowed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether `producer_id` may have such batches (and forgets it).
    fn take(&self, producer_id: i64) -> bool {
        let removed = self.ids.lock().unwrap_or_else(|p| p.into_inner()).remove(&producer_id);
        removed || self.overflowed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why a transaction call failed.
#[derive(Debug, Clone)]
pub enum TxnError {
    /// The coordinator refused it.
    Coordinator(ControllerError),
    /// The coordinator decided; its markers are not committed yet (the timer finishes them).
    Markers(AgentError),
    /// InitProducerId: the previous transaction is still being finished.
    StillFinishing,
}

impl Agent {
    /// EndTxn: this agent's acks=0/1 batches of the producer committed first, then the
    /// coordinator moves the transaction to Prepare*, then its markers are written and
    /// committed. A repeated EndTxn whose outcome is already complete is Ok. `client_version`:
    /// the client's transaction protocol version (2 from EndTxn v5: the epoch is bumped, and
    /// the markers carry the new one). Returns the producer id and epoch the client goes on with.
    pub async fn end_txn(
        &self,
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        client_version: i16,
    ) -> Result<(i64, i16), TxnError> {
        // The producer's acks=0/1 batches of this transaction may still be on their way to a
        // commit: once the transaction is no longer ongoing, the controller would refuse them.
        if self.txn_unflushed.take(producer_id)
            && let Err(e) = self.uploader.barrier(Instant::now() + MARKERS_WAIT).await
        {
            // Still on their way: the client's retry of EndTxn waits for them again.
            self.txn_unflushed.insert(producer_id);
            return Err(TxnError::Markers(e));
        }
        let answer = self
            .controller
            .end_txn2(transactional_id, producer_id, epoch, commit, client_version)
            .await
            .map_err(TxnError::Coordinator)?;
        let Some(end) = answer.markers else { return Ok((answer.producer_id, answer.epoch)) };
        self.uploader.write_markers(&end, Instant::now() + MARKERS_WAIT).await.map_err(|e| {
            // The transaction stays Prepare*: the timer finishes it; the client retries.
            tracing::warn!(transactional_id = %end.transactional_id, error = %e, "EndTxn: cannot write markers");
            TxnError::Markers(e)
        })?;
        Ok((answer.producer_id, answer.epoch))
    }

    /// InitProducerId with a transactional id: the producer id and epoch, after finishing (its
    /// markers written) a transaction the previous producer of the id left open.
    pub async fn init_transactional_producer(
        &self,
        transactional_id: String,
        timeout_ms: i32,
        expected: (i64, i16),
    ) -> Result<(i64, i16), TxnError> {
        for _ in 0..FINISH_ATTEMPTS_MAX {
            let answer = self.controller.init_transactional_producer(transactional_id.clone(), timeout_ms, expected).await;
            match answer.map_err(TxnError::Coordinator)? {
                TxnInit::Ready { producer_id, epoch } => return Ok((producer_id, epoch)),
                TxnInit::Finish(end) => {
                    if let Err(e) = self.uploader.write_markers(&end, Instant::now() + MARKERS_WAIT).await {
                        tracing::warn!(transactional_id = %end.transactional_id, error = %e, "InitProducerId: cannot finish the previous transaction");
                        break;
                    }
                }
            }
        }
        Err(TxnError::StillFinishing)
    }
}

/// The background job finishing transactions: timeouts and unfinished markers.
pub struct TxnTimer {
    pub controller: Arc<dyn ControllerClient>,
    pub uploader: Uploader,
    pub interval: Duration,
}

impl TxnTimer {
    /// Runs until `shutdown` is cancelled.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => self.run_once().await,
                }
            }
        })
    }

    /// One pass: asks the controller what to finish and writes those markers.
    pub async fn run_once(&self) {
        let ends = match self.controller.transactions_to_finish().await {
            Ok(ends) => ends,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list transactions to finish");
                return;
            }
        };
        for end in ends {
            if let Err(e) = self.uploader.write_markers(&end, Instant::now() + MARKERS_WAIT).await {
                tracing::warn!(transactional_id = %end.transactional_id, error = %e, "cannot write transaction markers; will retry");
            }
        }
    }
}
