//! InitProducerId: producer ids for idempotent producers, and for transactional producers the
//! transaction coordinator's answer (epoch bump, fencing the previous producer of the same
//! transactional id, KIP-360 recovery). When the previous producer left a transaction open,
//! it is aborted first (markers written before the answer), as Kafka's coordinator does.
//!
//! ACLs: WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED); without one,
//! IDEMPOTENT_WRITE on the cluster or WRITE on some topic (CLUSTER_AUTHORIZATION_FAILED).
//!
//! DescribeProducers (`kafka-transactions.sh describe-producers`): the producers the
//! controller keeps for each partition's sequence check, with their open transaction's first
//! offset; `last_timestamp` is when the controller last committed a batch of the producer
//! (Kafka: the batch's max timestamp). READ on the topic (TOPIC_AUTHORIZATION_FAILED).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};

use super::acls::Access;
use crate::agent::Agent;
use crate::agent::txn::TxnError;
use crate::api::TopicRef;
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

pub async fn describe_producers(agent: &Agent, access: &Access<'_>, req: DescribeProducersRequest) -> DescribeProducersResponse {
    // Each partition's answer, in request order: producers, or an error code; known partitions
    // go to the controller in one call.
    let mut answers: Vec<Vec<Result<Vec<ProducerState>, i16>>> = Vec::with_capacity(req.topics.len());
    let mut asked = Vec::new();
    let mut slots = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let allowed = access.check(AclOperation::Read, ResourceType::Topic, &t.name.0);
        let meta = if allowed { agent.controller.topic(TopicRef::Name(&t.name.0)) } else { None };
        let topic = t
            .partition_indexes
            .iter()
            .enumerate()
            .map(|(pi, p)| match &meta {
                _ if !allowed => Err(ResponseError::TopicAuthorizationFailed.code()),
                Some(m) if (0..m.partitions).contains(p) => {
                    asked.push((m.id, *p));
                    slots.push((ti, pi));
                    Ok(Vec::new())
                }
                _ => Err(ResponseError::UnknownTopicOrPartition.code()),
            })
            .collect();
        answers.push(topic);
    }
    if !asked.is_empty() {
        let results = match agent.controller.describe_producers(asked).await {
            Ok(results) => results,
            Err(e) => slots.iter().map(|_| Err(e.clone())).collect(),
        };
        for ((ti, pi), r) in slots.into_iter().zip(results) {
            answers[ti][pi] = r.map_err(|e| controller_code(&e)).map(|producers| {
                producers
                    .into_iter()
                    .map(|p| {
                        ProducerState::default()
                            .with_producer_id(ProducerId(p.producer_id))
                            .with_producer_epoch(p.epoch.into())
                            .with_last_sequence(p.last_sequence)
                            .with_last_timestamp(p.last_timestamp_ms)
                            .with_coordinator_epoch(-1)
                            .with_current_txn_start_offset(p.current_txn_start_offset)
                    })
                    .collect()
            });
        }
    }
    let topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, answers)| {
            let partitions = t
                .partition_indexes
                .iter()
                .zip(answers)
                .map(|(p, a)| {
                    let r = PartitionResponse::default().with_partition_index(*p);
                    match a {
                        Ok(producers) => r.with_active_producers(producers),
                        Err(code) => r.with_error_code(code),
                    }
                })
                .collect();
            TopicResponse::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
