//! Topic administration: CreateTopics, DeleteTopics and CreatePartitions, forwarded to the
//! controller.
//!
//! ACLs (Kafka's KRaft controller's rules): CreateTopics needs CREATE on the cluster or on the
//! topic, and answers a topic's configs only with DESCRIBE_CONFIGS on it; DeleteTopics needs
//! DELETE on the cluster or on the topic; CreatePartitions needs ALTER on the topic.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, TopicName,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::cluster::Brokers;
use crate::api::acl::{AclOperation, CLUSTER_NAME, ResourceType};
use crate::api::groups::ClientInfo;
use crate::api::{ControllerError, CreatePartitions, CreateTopic, ListenerAddress, TopicKey, TopicRef};
use crate::protocol::error::controller_code;

/// Kafka's ConfigEntry source for configs set on the topic.
const CONFIG_SOURCE_TOPIC: i8 = 1;

pub async fn create_topics(agent: &Agent, access: &Access<'_>, version: i16, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let cluster_create = access.allows(AclOperation::Create, ResourceType::Cluster, CLUSTER_NAME);
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> =
        req.topics.iter().filter(|t| !seen.insert(t.name.0.to_string())).map(|t| t.name.0.to_string()).collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let outcome = if duplicates.contains(&name) {
            Err(ControllerError::InvalidRequest(format!("topic {name} appears more than once in the request")))
        } else if !cluster_create && !access.check(AclOperation::Create, ResourceType::Topic, &name) {
            results.push(
                result
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes("Authorization failed."))),
            );
            continue;
        } else {
            let partitions = if t.assignments.is_empty() {
                Ok(t.num_partitions)
            } else if t.num_partitions != -1 || t.replication_factor != -1 {
                Err(ControllerError::InvalidRequest(
                    "both manual partition assignment and partition count or replication factor were set".into(),
                ))
            } else {
                Ok(t.assignments.len() as i32)
            };
            let mut configs = BTreeMap::new();
            for c in &t.configs {
                if let Some(v) = &c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
            match partitions {
                Err(e) => Err(e),
                Ok(partitions) => {
                    let create = CreateTopic {
                        name: name.clone(),
                        partitions,
                        replication_factor: t.replication_factor,
                        configs,
                        validate_only: req.validate_only,
                    };
                    agent.controller.create_topic(create).await
                }
            }
        };
        match outcome {
            Ok(meta) => {
                // Configs are answered to a client that may describe them.
                let describable = access.allows(AclOperation::DescribeConfigs, ResourceType::Topic, &name);
                if version >= 5 && !describable {
                    result = result
                        .with_num_partitions(meta.partitions)
                        .with_replication_factor(1)
                        .with_topic_config_error_code(ResponseError::TopicAuthorizationFailed.code());
                } else if version >= 5 {
                    result = result.with_num_partitions(meta.partitions).with_replication_factor(1).with_configs(Some(
                        meta.configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(k.clone()))
                                    .with_value(Some(str_bytes(v.clone())))
                                    .with_config_source(CONFIG_SOURCE_TOPIC)
                            })
                            .collect(),
                    ));
                }
                if version >= 7 {
                    result = result.with_topic_id(meta.id);
                }
                result = result.with_error_message(None);
            }
            Err(e) => {
                result = result.with_error_code(controller_code(&e)).with_error_message(Some(str_bytes(e.to_string())));
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(agent: &Agent, access: &Access<'_>, version: i16, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let cluster_delete = access.allows(AclOperation::Delete, ResourceType::Cluster, CLUSTER_NAME);
    // Kafka's rules: DELETE on the topic (or the cluster); by name, a topic the client may not
    // describe is TOPIC_AUTHORIZATION_FAILED whether or not it exists; by id, the name is
    // answered only to a client that may describe it.
    let may = |op, name: &str| cluster_delete || access.allows(op, ResourceType::Topic, name);
    // v0-5 name topics in `topic_names`; v6 in `topics`, by name or by id.
    let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        req.topic_names.iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        // `shown`: the name answered; `real`: the topic's, for the denial's log line.
        let refused = |shown: Option<&str>, real: &str| {
            access.denied(AclOperation::Delete, ResourceType::Topic, real);
            let r = DeletableTopicResult::default()
                .with_name(shown.map(|n| TopicName(str_bytes(n))))
                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
            if version >= 6 { r.with_topic_id(id) } else { r }
        };
        let result = match &name {
            Some(n) if !may(AclOperation::Describe, n) => {
                responses.push(refused(Some(n), n));
                continue;
            }
            Some(n) if agent.controller.topic(TopicRef::Name(n)).is_some() && !may(AclOperation::Delete, n) => {
                responses.push(refused(Some(n), n));
                continue;
            }
            Some(n) => agent.controller.delete_topic(TopicKey::Name(n.to_string())).await,
            None if id.is_nil() => Err(ControllerError::InvalidRequest("neither topic name nor id".into())),
            None => match agent.controller.topic(TopicRef::Id(id)) {
                Some(meta) if !may(AclOperation::Delete, &meta.name) => {
                    let shown = may(AclOperation::Describe, &meta.name).then_some(meta.name.as_str());
                    responses.push(refused(shown, &meta.name));
                    continue;
                }
                _ => agent.controller.delete_topic(TopicKey::Id(id)).await,
            },
        };
        let mut r = DeletableTopicResult::default().with_name(name.clone().map(|n| TopicName(str_bytes(n))));
        match result {
            Ok(meta) => {
                if version >= 6 {
                    r = r.with_topic_id(meta.id).with_name(Some(TopicName(str_bytes(meta.name.clone()))));
                }
            }
            Err(e) => {
                let code = match (&e, &name) {
                    (ControllerError::UnknownTopicOrPartition, None) => ResponseError::UnknownTopicId.code(),
                    _ => controller_code(&e),
                };
                r = r.with_error_code(code);
                if version >= 5 {
                    r = r.with_error_message(Some(str_bytes(e.to_string())));
                }
                if version >= 6 {
                    r = r.with_topic_id(id);
                }
            }
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// CreatePartitions, as Kafka's `ControllerApis` answers it: a topic named more than once is
/// answered once, INVALID_REQUEST; one the client may not ALTER, TOPIC_AUTHORIZATION_FAILED;
/// the others go to the controller one by one, in request order. A manual assignment may name
/// the brokers this client is shown.
pub async fn create_partitions(
    agent: &Agent,
    access: &Access<'_>,
    req: CreatePartitionsRequest,
    client: &ClientInfo,
    listener: &ListenerAddress,
) -> CreatePartitionsResponse {
    let result = |name: &TopicName| CreatePartitionsTopicResult::default().with_name(name.clone());
    let mut seen = HashSet::new();
    let duplicates: HashSet<&str> = req.topics.iter().map(|t| t.name.0.as_str()).filter(|n| !seen.insert(*n)).collect();
    let mut results = Vec::with_capacity(req.topics.len());
    let mut answered = HashSet::new();
    for t in req.topics.iter().filter(|t| duplicates.contains(t.name.0.as_str())) {
        if answered.insert(t.name.0.as_str()) {
            results.push(
                result(&t.name)
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes("Duplicate topic name."))),
            );
        }
    }
    let unique = || req.topics.iter().filter(|t| !duplicates.contains(t.name.0.as_str()));
    let refused = access.refused(AclOperation::Alter, ResourceType::Topic, unique().map(|t| t.name.0.as_str()));
    for t in unique().filter(|t| refused.contains(t.name.0.as_str())) {
        results.push(result(&t.name).with_error_code(ResponseError::TopicAuthorizationFailed.code()));
    }
    let brokers: Vec<i32> = Brokers::for_client(agent, listener, &client.client_id).agents.iter().map(|a| a.node_id).collect();
    for t in unique().filter(|t| !refused.contains(t.name.0.as_str())) {
        let grow = CreatePartitions {
            name: t.name.0.to_string(),
            count: t.count,
            assignments: t.assignments.as_ref().map(|a| a.iter().map(|r| r.broker_ids.iter().map(|b| b.0).collect()).collect()),
            brokers: brokers.clone(),
            validate_only: req.validate_only,
        };
        results.push(match agent.controller.create_partitions(grow).await {
            Ok(_) => result(&t.name),
            // Kafka answers an unknown topic without a message.
            Err(ControllerError::UnknownTopicOrPartition) => result(&t.name).with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            Err(e) => result(&t.name).with_error_code(controller_code(&e)).with_error_message(Some(str_bytes(e.to_string()))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
