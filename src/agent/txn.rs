//! Transaction markers: the agent's half of the transaction coordinator.
//!
//! The controller decides a transaction's outcome (`controller::txn`); the agent writes it into
//! the log: one small object holding one control batch (commit or abort marker) per partition
//! of the transaction, committed through the normal commit path with `txn_end` set. The commit
//! gives each marker an offset after the transaction's data (the producer's data is committed
//! before it sends EndTxn, and data arriving once the transaction is no longer ongoing is
//! refused) and completes the transaction in the same store transaction.
//!
//! [`TxnTimer`] is the background job that aborts transactions older than their timeout and
//! finishes any whose markers were not committed (an agent crash, a failed PUT).
//!
//! Must not touch: Kafka request/response types, the store's SQL.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AgentError;
use crate::clock::{Clock, Entropy};
use crate::agent::client::ControllerClient;
use crate::api::txn::TxnEnd;
use crate::api::{CommitRequest, ControllerError};
use crate::format::object::ObjectBuilder;
use crate::object::{ObjectStore, keys};
use crate::format::records;

/// Kafka's coordinator epoch in the marker value; there is one coordinator, forever.
const COORDINATOR_EPOCH: i32 = 0;

/// Writes transaction markers as objects.
pub struct MarkerWriter {
    pub store: Arc<dyn ObjectStore>,
    pub controller: Arc<dyn ControllerClient>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    /// The agent's name in object keys.
    pub agent: String,
    pub key_prefix: String,
    /// Marker objects are held here from before their PUT until their commit is answered.
    pub in_flight: Arc<super::orphans::InFlightKeys>,
}

impl MarkerWriter {
    /// Writes and commits the markers of `end`, completing the transaction. Safe to repeat:
    /// markers of a transaction already completed are refused by the controller
    /// (INVALID_TXN_STATE) and their object is left to the orphan collector.
    pub async fn write(&self, end: &TxnEnd) -> Result<(), AgentError> {
        let now = self.clock.now_ms();
        let mut builder = ObjectBuilder::new();
        for (topic_id, partition) in &end.partitions {
            let (batch, header) = records::control_batch(end.producer_id, end.epoch, end.commit, now, COORDINATOR_EPOCH);
            builder
                .add_batch(*topic_id, *partition, &batch, &header)
                .map_err(|e| AgentError::CorruptObject(e.to_string()))?;
        }
        let (body, extents) = builder.finish();
        let key = keys::new_object_key(&self.key_prefix, &self.agent, &*self.clock, &*self.entropy);
        let size = body.len() as u64;
        let _hold = self.in_flight.hold(&key);
        self.store.put(&key, body).await?;
        let results = self
            .controller
            .commit_object(CommitRequest {
                object_key: key,
                object_size_bytes: size,
                agent: self.agent.clone(),
                extents,
                wal: None,
                txn_end: Some(end.clone()),
            })
            .await?;
        // A deleted topic's marker fails alone; the transaction is complete all the same.
        for r in results {
            match r {
                Ok(_) | Err(ControllerError::UnknownTopicOrPartition) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::debug!(transactional_id = %end.transactional_id, commit = end.commit, partitions = end.partitions.len(), "transaction markers committed");
        Ok(())
    }
}

/// The background job finishing transactions: timeouts and unfinished markers.
pub struct TxnTimer {
    pub markers: Arc<MarkerWriter>,
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
        let ends = match self.markers.controller.transactions_to_finish().await {
            Ok(ends) => ends,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list transactions to finish");
                return;
            }
        };
        for end in ends {
            if let Err(e) = self.markers.write(&end).await {
                tracing::warn!(transactional_id = %end.transactional_id, error = %e, "cannot write transaction markers; will retry");
            }
        }
    }
}
