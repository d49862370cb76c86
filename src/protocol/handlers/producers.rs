//! InitProducerId: producer ids for idempotent producers, and for transactional producers the
//! transaction coordinator's answer (epoch bump, fencing the previous producer of the same
//! transactional id, KIP-360 recovery). When the previous producer left a transaction open,
//! it is aborted first (markers written before the answer), as Kafka's coordinator does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::agent::Agent;
use crate::api::txn::TxnInit;
use crate::protocol::error::controller_code;

/// Previous transactions finished before the client is told to retry
/// (CONCURRENT_TRANSACTIONS): one abort, one more for a concurrent retry.
const FINISH_ATTEMPTS_MAX: usize = 3;

pub async fn init_producer_id(agent: &Agent, version: i16, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    let Some(transactional_id) = req.transactional_id.as_ref().filter(|t| !t.0.is_empty()) else {
        return match agent.controller.init_producer_id().await {
            Ok((id, epoch)) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(epoch),
            Err(e) => refused.with_error_code(controller_code(&e)),
        };
    };
    let expected = if version >= 3 { (req.producer_id.0, req.producer_epoch) } else { (-1, -1) };
    for _ in 0..FINISH_ATTEMPTS_MAX {
        let answer = agent
            .controller
            .init_transactional_producer(transactional_id.0.to_string(), req.transaction_timeout_ms, expected)
            .await;
        match answer {
            Ok(TxnInit::Ready { producer_id, epoch }) => {
                return InitProducerIdResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(epoch);
            }
            Ok(TxnInit::Finish(end)) => {
                if let Err(e) = agent.markers.write(&end).await {
                    tracing::warn!(transactional_id = %end.transactional_id, error = %e, "InitProducerId: cannot finish the previous transaction");
                    break;
                }
            }
            Err(e) => {
                let code = controller_code(&e);
                // KIP-588: PRODUCER_FENCED from v4 on.
                let code = if version < 4 && code == ResponseError::ProducerFenced.code() {
                    ResponseError::InvalidProducerEpoch.code()
                } else {
                    code
                };
                return refused.with_error_code(code);
            }
        }
    }
    refused.with_error_code(ResponseError::ConcurrentTransactions.code())
}
