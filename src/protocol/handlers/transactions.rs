//! Transactions: AddPartitionsToTxn (v0-3 client form, v4-5 batched form), AddOffsetsToTxn,
//! EndTxn, TxnOffsetCommit, DescribeTransactions, ListTransactions.
//!
//! Transaction version 2 (KIP-890 part 2, `transaction.version` finalized at 2): its clients
//! send EndTxn v5 (the coordinator bumps the epoch at every commit and abort and answers the
//! new producer id and epoch), Produce v12 (the partition joins the transaction with the batch,
//! see `agent::produce`) and TxnOffsetCommit v5 (the group joins with the offsets), and no
//! AddPartitionsToTxn or AddOffsetsToTxn. Older clients keep version 0-1, per transaction. The coordinator state lives
//! in the controller (`controller::txn`); EndTxn writes the markers through `agent::txn` before
//! it answers, so a producer's next transaction starts on a completed one.
//!
//! Kafka's KIP-588 rule for old clients: coordinator APIs below the version that knows
//! PRODUCER_FENCED answer INVALID_PRODUCER_EPOCH instead.
//!
//! ACLs (Kafka's): WRITE on the transactional id for AddPartitionsToTxn v0-3 (and WRITE on each
//! topic), AddOffsetsToTxn (and READ on the group), EndTxn and TxnOffsetCommit (and READ on the
//! group and each topic); CLUSTER_ACTION on the cluster for the brokers' AddPartitionsToTxn v4+;
//! DESCRIBE on the transactional id for DescribeTransactions (partitions of topics the client
//! may not describe left out) and ListTransactions (others left out).

use std::collections::HashSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, DescribeTransactionsRequest,
    DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::txn::TxnError;
use crate::api::ControllerError;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::groups::CommitOffset;
use crate::api::txn::{TXN_VERSION_EPOCH_BUMP, TxnStatus};
use crate::protocol::error::{agent_code, controller_code, group_code};

/// PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH for a client too old to know it (KIP-588).
fn fenced_code(e: &ControllerError, knows_fenced: bool) -> i16 {
    let code = controller_code(e);
    if !knows_fenced && code == ResponseError::ProducerFenced.code() { ResponseError::InvalidProducerEpoch.code() } else { code }
}

/// One error code per item from per-item results, or the request-level error for all `n`.
fn item_codes(results: Result<Vec<Result<(), ControllerError>>, ControllerError>, n: usize, knows_fenced: bool) -> Vec<i16> {
    match results {
        Ok(rs) => rs.iter().map(|r| r.as_ref().map_or_else(|e| fenced_code(e, knows_fenced), |()| 0)).collect(),
        Err(e) => vec![fenced_code(&e, knows_fenced); n],
    }
}

/// The transactional id as the controller takes it (empty ids are refused there).
fn txn_id(id: &TransactionalId) -> String {
    id.0.to_string()
}

#[allow(clippy::too_many_arguments)]
async fn add_partitions(
    agent: &Agent,
    access: &Access<'_>,
    client_form: bool,
    transactional_id: &TransactionalId,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
    knows_fenced: bool,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let wanted: Vec<(String, i32)> = topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p))).collect();
    let n = wanted.len();
    // The client form (v0-3) needs WRITE on the transactional id, then on every topic: a topic
    // refused fails the whole request (the others OPERATION_NOT_ATTEMPTED), as in Kafka.
    let refused: Vec<bool> = if client_form && !access.check(AclOperation::Write, ResourceType::TransactionalId, &transactional_id.0) {
        Vec::new()
    } else if client_form {
        topics.iter().map(|t| !access.check(AclOperation::Write, ResourceType::Topic, &t.name.0)).collect()
    } else {
        vec![false; topics.len()]
    };
    let results = if refused.is_empty() {
        vec![ResponseError::TransactionalIdAuthorizationFailed.code(); n]
    } else if refused.iter().any(|r| *r) {
        topics
            .iter()
            .zip(&refused)
            .flat_map(|(t, r)| {
                let code = if *r { ResponseError::TopicAuthorizationFailed } else { ResponseError::OperationNotAttempted };
                t.partitions.iter().map(move |_| code.code())
            })
            .collect()
    } else {
        // The client form is transaction version 0-1; the brokers' form adds for a Produce of a
        // version 2 client (KIP-890 part 2), as Kafka's coordinator takes it.
        let client_version = if client_form { 0 } else { TXN_VERSION_EPOCH_BUMP };
        let added = agent
            .controller
            .add_partitions_to_txn(txn_id(transactional_id), producer_id, epoch, wanted, verify_only, Some(client_version))
            .await;
        item_codes(added, n, knows_fenced)
    };
    let mut codes = results.into_iter();
    topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(codes.next().unwrap_or(0))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default().with_name(t.name.clone()).with_results_by_partition(partitions)
        })
        .collect()
}

pub async fn add_partitions_to_txn(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_partitions(
            agent,
            access,
            true,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            false,
            &req.v3_and_below_topics,
            version >= 2,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    // The batched form (v4+) is for brokers: CLUSTER_ACTION on the cluster.
    if !access.check_cluster(AclOperation::ClusterAction) {
        return AddPartitionsToTxnResponse::default().with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let mut out = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let results =
            add_partitions(agent, access, false, &t.transactional_id, t.producer_id.0, t.producer_epoch, t.verify_only, &t.topics, true)
                .await;
        out.push(AddPartitionsToTxnResult::default().with_transactional_id(t.transactional_id.clone()).with_topic_results(results));
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

pub async fn add_offsets_to_txn(agent: &Agent, access: &Access<'_>, version: i16, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    if !access.check(AclOperation::Write, ResourceType::TransactionalId, &req.transactional_id.0) {
        return AddOffsetsToTxnResponse::default().with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    if !access.check(AclOperation::Read, ResourceType::Group, &req.group_id.0) {
        return AddOffsetsToTxnResponse::default().with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let r = agent
        .controller
        .add_offsets_to_txn(txn_id(&req.transactional_id), req.producer_id.0, req.producer_epoch, req.group_id.0.to_string())
        .await;
    AddOffsetsToTxnResponse::default().with_error_code(r.err().map_or(0, |e| fenced_code(&e, version >= 2)))
}

pub async fn end_txn(agent: &Agent, access: &Access<'_>, version: i16, req: EndTxnRequest) -> EndTxnResponse {
    let resp = EndTxnResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if !access.check(AclOperation::Write, ResourceType::TransactionalId, &req.transactional_id.0) {
        return resp.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    // EndTxn v5 is sent by transaction version 2 clients only (Kafka's rule too).
    let client_version = if version >= 5 { TXN_VERSION_EPOCH_BUMP } else { 0 };
    let ended = agent
        .end_txn(txn_id(&req.transactional_id), req.producer_id.0, req.producer_epoch, req.committed, client_version)
        .await;
    let code = match ended {
        // v5+: the producer id and epoch for the next transaction (bumped with version 2).
        Ok((producer_id, epoch)) if version >= 5 => return resp.with_producer_id(ProducerId(producer_id)).with_producer_epoch(epoch),
        Ok(_) => 0,
        Err(TxnError::Coordinator(e)) => fenced_code(&e, version >= 2),
        Err(TxnError::Markers(e)) => match agent_code(&e) {
            c if c == ResponseError::InvalidTxnState.code() => c,
            _ => ResponseError::ConcurrentTransactions.code(),
        },
        Err(TxnError::StillFinishing) => ResponseError::ConcurrentTransactions.code(),
    };
    resp.with_error_code(code)
}

pub async fn txn_offset_commit(agent: &Agent, access: &Access<'_>, version: i16, req: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    // WRITE on the transactional id, READ on the group (each fails every partition), READ on
    // each topic (its partitions TOPIC_AUTHORIZATION_FAILED, the others still committed).
    let all_refused = if !access.check(AclOperation::Write, ResourceType::TransactionalId, &req.transactional_id.0) {
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else if !access.check(AclOperation::Read, ResourceType::Group, &req.group_id.0) {
        Some(ResponseError::GroupAuthorizationFailed.code())
    } else {
        None
    };
    let refused: HashSet<&str> = if all_refused.is_some() {
        HashSet::new()
    } else {
        access.refused(AclOperation::Read, ResourceType::Topic, req.topics.iter().map(|t| &*t.name.0))
    };
    let offsets: Vec<CommitOffset> = req
        .topics
        .iter()
        .filter(|t| all_refused.is_none() && !refused.contains(&*t.name.0))
        .flat_map(|t| {
            t.partitions.iter().map(|p| CommitOffset {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    let n = offsets.len();
    let member = if version >= 3 {
        (req.member_id.to_string(), req.group_instance_id.as_ref().map(|i| i.to_string()), req.generation_id)
    } else {
        (String::new(), None, -1)
    };
    let checked = if n == 0 {
        Ok(())
    } else {
        agent.controller.validate_txn_offset_commit(req.group_id.0.to_string(), member.0, member.1, member.2).await
    };
    let codes: Vec<i16> = match checked {
        _ if n == 0 => Vec::new(),
        Err(e) => vec![group_code(&e); n],
        Ok(()) => {
            let id = txn_id(&req.transactional_id);
            // v5 is sent by transaction version 2 clients, with no AddOffsetsToTxn before it:
            // the group joins the transaction here (Kafka's implicit add).
            let client_version = if version >= 5 { TXN_VERSION_EPOCH_BUMP } else { 0 };
            let stored = agent
                .controller
                .txn_offset_commit(id, req.producer_id.0, req.producer_epoch, req.group_id.0.to_string(), offsets, Some(client_version))
                .await;
            item_codes(stored, n, version >= 3)
        }
    };
    let mut codes = codes.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let decided = all_refused.or(refused.contains(&*t.name.0).then_some(ResponseError::TopicAuthorizationFailed.code()));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = decided.unwrap_or_else(|| codes.next().unwrap_or(0));
                    TxnOffsetCommitResponsePartition::default().with_partition_index(p.partition_index).with_error_code(code)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub async fn describe_transactions(agent: &Agent, access: &Access<'_>, req: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in &req.transactional_ids {
        let base = TransactionState::default()
            .with_transactional_id(id.clone())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        if !access.check(AclOperation::Describe, ResourceType::TransactionalId, &id.0) {
            states.push(
                base.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
                    .with_transaction_state(str_bytes("")),
            );
            continue;
        }
        let state = match agent.controller.describe_transaction(id.0.to_string()).await {
            Err(e) => base.with_error_code(controller_code(&e)).with_transaction_state(str_bytes("")),
            Ok(None) => base.with_error_code(ResponseError::TransactionalIdNotFound.code()).with_transaction_state(str_bytes("")),
            Ok(Some(d)) => {
                let mut topics: Vec<TopicData> = Vec::new();
                // Only the partitions of topics the client may describe (Kafka's rule).
                for (topic, p) in d.partitions.into_iter().filter(|(t, _)| access.allows(AclOperation::Describe, ResourceType::Topic, t)) {
                    match topics.last_mut() {
                        Some(t) if *t.topic.0 == *topic => t.partitions.push(p),
                        _ => topics.push(TopicData::default().with_topic(str_bytes(topic).into()).with_partitions(vec![p])),
                    }
                }
                base.with_producer_id(ProducerId(d.producer_id))
                    .with_producer_epoch(d.epoch)
                    .with_transaction_state(str_bytes(d.status.kafka_name()))
                    .with_transaction_timeout_ms(d.timeout_ms)
                    .with_transaction_start_time_ms(d.started_ms)
                    .with_topics(topics)
            }
        };
        states.push(state);
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// Every state name ListTransactions may filter on.
const STATE_NAMES: &[TxnStatus] = &[
    TxnStatus::Empty,
    TxnStatus::Ongoing,
    TxnStatus::PrepareCommit,
    TxnStatus::PrepareAbort,
    TxnStatus::CompleteCommit,
    TxnStatus::CompleteAbort,
];

pub async fn list_transactions(agent: &Agent, access: &Access<'_>, version: i16, req: ListTransactionsRequest) -> ListTransactionsResponse {
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<_> = req.state_filters.iter().filter(|s| !STATE_NAMES.iter().any(|n| n.kafka_name() == s.as_str())).cloned().collect();
    let producer_ids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let duration = if version >= 1 { req.duration_filter } else { -1 };
    let pattern = if version >= 2 { req.transactional_id_pattern.as_ref().map(|p| p.to_string()) } else { None };
    if pattern.as_deref().is_some_and(|p| !p.is_empty()) {
        // Java regular expressions are not implemented; refuse rather than guess.
        return ListTransactionsResponse::default().with_error_code(ResponseError::InvalidRequest.code());
    }
    let listed = match agent.controller.list_transactions(states, producer_ids, duration).await {
        Ok(listed) => listed,
        Err(e) => return ListTransactionsResponse::default().with_error_code(controller_code(&e)),
    };
    let listed = listed
        .into_iter()
        .filter(|d| access.allows(AclOperation::Describe, ResourceType::TransactionalId, &d.transactional_id))
        .map(|d| {
            ListedTransaction::default()
                .with_transactional_id(str_bytes(d.transactional_id).into())
                .with_producer_id(ProducerId(d.producer_id))
                .with_transaction_state(str_bytes(d.status.kafka_name()))
        })
        .collect();
    ListTransactionsResponse::default().with_unknown_state_filters(unknown).with_transaction_states(listed)
}
