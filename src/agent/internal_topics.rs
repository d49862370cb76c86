//! Kafka's internal topics as clients see them: `__consumer_offsets` and `__transaction_state`.
//!
//! Kafka keeps group offsets and transaction state in these topics and creates each on first
//! need (a FindCoordinator for a group or a transactional id, a Metadata request naming it).
//! Here the controller keeps that state in its store, so the topics stay empty; they exist so
//! that clients see what Kafka shows them: Metadata lists them with `is_internal` (which regex
//! subscriptions skip), ListOffsets and Fetch answer an empty log, and Produce and DeleteRecords
//! are refused with Kafka's `INVALID_TOPIC_EXCEPTION`. The layout is
//! [`crate::api::internal_topic_layout`].
//!
//! Must not touch: Kafka request/response types (the handlers call [`InternalTopics::ensure`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::agent::client::ControllerClient;
use crate::api::{ControllerError, TopicRef};

/// Which internal topic a coordinator key type needs: FindCoordinator's key type 0 (a group)
/// `__consumer_offsets`, 1 (a transactional id) `__transaction_state`.
pub fn for_coordinator(key_type: i8) -> Option<&'static str> {
    match key_type {
        0 => Some(OFFSETS),
        1 => Some(TRANSACTIONS),
        _ => None,
    }
}

const OFFSETS: &str = "__consumer_offsets";
const TRANSACTIONS: &str = "__transaction_state";

/// The creations in flight: at most one per topic, however many clients ask at once.
#[derive(Debug, Default)]
pub struct InternalTopics {
    offsets: Arc<AtomicBool>,
    transactions: Arc<AtomicBool>,
}

impl InternalTopics {
    /// Makes sure `name` exists, in the background: the caller (FindCoordinator, answered from
    /// the agent's own state) neither waits for the controller nor fails with it. A failed
    /// creation is logged and tried again on the next call.
    pub fn ensure(&self, controller: &Arc<dyn ControllerClient>, name: &'static str) {
        let in_flight = match name {
            OFFSETS => &self.offsets,
            TRANSACTIONS => &self.transactions,
            _ => return,
        };
        if controller.topic(TopicRef::Name(name)).is_some() || in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let controller = controller.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            match create(&controller, name).await {
                Ok(()) => tracing::info!(topic = name, "created Kafka's internal topic (it stays empty: the controller keeps this state)"),
                Err(e) => tracing::warn!(topic = name, error = %e, "could not create Kafka's internal topic; the next request tries again"),
            }
            in_flight.store(false, Ordering::Release);
        });
    }
}

/// Creates `name` now (a Metadata request naming it waits for it, as on Kafka); an existing
/// topic is success.
pub async fn create(controller: &Arc<dyn ControllerClient>, name: &str) -> Result<(), ControllerError> {
    match controller.create_internal_topic(name.to_string()).await {
        Ok(_) | Err(ControllerError::TopicAlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
