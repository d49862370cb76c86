//! InitProducerId: producer ids for idempotent producers, and for transactional producers the
//! transaction coordinator's answer (epoch bump, fencing the previous producer of the same
//! transactional id, KIP-360 recovery). When the previous producer left a transaction open,
//! it is aborted first (markers written before the answer), as Kafka's coordinator does.
//!
//! ACLs: WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED); without one,
//! IDEMPOTENT_WRITE on the cluster or WRITE on some topic (CLUSTER_AUTHORIZATION_FAILED).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::acls::Access;
use crate::agent::Agent;
use crate::agent::txn::TxnError;
use crate::api::acl::{AclOperation, CLUSTER_NAME, ResourceType};
use crate::protocol::error::controller_code;

pub async fn init_producer_id(agent: &Agent, access: &Access<'_>, version: i16, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    let Some(transactional_id) = req.transactional_id.as_ref().filter(|t| !t.0.is_empty()) else {
        // Idempotent producers: IDEMPOTENT_WRITE on the cluster, or WRITE on some topic.
        if !access.allows(AclOperation::IdempotentWrite, ResourceType::Cluster, CLUSTER_NAME)
            && !access.allows_any_of_type(AclOperation::Write, ResourceType::Topic)
        {
            access.denied(AclOperation::IdempotentWrite, ResourceType::Cluster, CLUSTER_NAME);
            return refused.with_error_code(ResponseError::ClusterAuthorizationFailed.code());
        }
        return match agent.controller.init_producer_id().await {
            Ok((id, epoch)) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(epoch),
            Err(e) => refused.with_error_code(controller_code(&e)),
        };
    };
    if !access.check(AclOperation::Write, ResourceType::TransactionalId, &transactional_id.0) {
        return refused.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let expected = if version >= 3 { (req.producer_id.0, req.producer_epoch) } else { (-1, -1) };
    match agent.init_transactional_producer(transactional_id.0.to_string(), req.transaction_timeout_ms, expected).await {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(epoch),
        Err(TxnError::Coordinator(e)) => {
            let code = controller_code(&e);
            // KIP-588: PRODUCER_FENCED from v4 on.
            let code =
                if version < 4 && code == ResponseError::ProducerFenced.code() { ResponseError::InvalidProducerEpoch.code() } else { code };
            refused.with_error_code(code)
        }
        Err(TxnError::Markers(_) | TxnError::StillFinishing) => refused.with_error_code(ResponseError::ConcurrentTransactions.code()),
    }
}
