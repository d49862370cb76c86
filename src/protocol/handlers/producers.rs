//! InitProducerId: producer ids for idempotent producers. Transactions are not built yet: a
//! request with a transactional id is refused with INVALID_REQUEST and a message saying so.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::agent::Agent;
use crate::protocol::error::controller_code;

pub async fn init_producer_id(agent: &Agent, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if req.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        tracing::warn!("InitProducerId with a transactional id: transactions are not supported yet");
        return refused.with_error_code(ResponseError::InvalidRequest.code());
    }
    match agent.controller.init_producer_id().await {
        Ok((id, epoch)) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(epoch),
        Err(e) => refused.with_error_code(controller_code(&e)),
    }
}
