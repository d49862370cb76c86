//! Metadata: in sidecar mode this agent is the only broker, the controller and the leader of
//! every partition; in cluster mode the brokers are the live agents and leaders are spread over
//! them (see [`crate::agent::cluster`]); this agent is named the controller either way.
//! Unknown topics are created when the client allows it and `[topics] auto_create` is on.
//! DescribeCluster (the AdminClient's `describeCluster`) and DescribeTopicPartitions (the
//! AdminClient's `describeTopics`, paged by a cursor) tell the same story.
//!
//! ACLs (Kafka's rules): a topic named by the client needs DESCRIBE (else
//! TOPIC_AUTHORIZATION_FAILED, before it is looked up: its existence is not disclosed); a
//! listing of all topics leaves out the ones it may not describe; auto-creation needs CREATE on
//! the cluster or the topic. Authorized-operations fields carry the client's operations when
//! asked (the cluster's only with DESCRIBE on it, else 0).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::cluster::Brokers;
use crate::agent::fetch::LEADER_EPOCH;
use crate::agent::internal_topics;
use crate::api::acl::{AclOperation, CLUSTER_NAME, ResourceType};
use crate::api::groups::ClientInfo;
use crate::api::{
    ControllerError, CreateTopic, ListenerAddress, TopicMeta, TopicRef, internal_topic_layout, is_internal_topic, validate_topic_name,
};
use crate::protocol::error::controller_code;

fn topic_entry(brokers: &Brokers, t: &TopicMeta) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(is_internal_topic(&t.name))
        .with_partitions(
            (0..t.partitions)
                .map(|p| {
                    let leader = BrokerId(brokers.leader(t.id, p));
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(leader)
                        .with_leader_epoch(LEADER_EPOCH)
                        .with_replica_nodes(vec![leader])
                        .with_isr_nodes(vec![leader])
                })
                .collect(),
        )
}

fn error_entry(name: Option<&str>, id: uuid::Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        // As Kafka: an internal topic's name says so, whether it exists or not.
        .with_is_internal(name.is_some_and(is_internal_topic))
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
}

pub async fn handle(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: MetadataRequest,
    client: &ClientInfo,
    listener: &ListenerAddress,
) -> MetadataResponse {
    let me = BrokerId(agent.settings.node_id);
    let brokers = Brokers::for_client(agent, listener, &client.client_id);
    let allow_auto_create = (version < 4 || req.allow_auto_topic_creation) && agent.settings.topics.auto_create;
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None, // v0: empty means all
        Some(t) => Some(t),
    };
    let describe = |name: &str| access.check(AclOperation::Describe, ResourceType::Topic, name);
    let denied = |name: Option<&str>, id| error_entry(name, id, ResponseError::TopicAuthorizationFailed.code());
    let mut topics: Vec<MetadataResponseTopic> = match requested {
        // All topics: those the client may not describe are left out, silently (as Kafka).
        None => agent
            .controller
            .topics()
            .iter()
            .filter(|t| access.allows(AclOperation::Describe, ResourceType::Topic, &t.name))
            .map(|t| topic_entry(&brokers, t))
            .collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let entry = match t.name {
                    Some(name) => {
                        let name: &str = &name.0;
                        // Checked before the lookup: whether it exists is not disclosed.
                        if !describe(name) {
                            denied(Some(name), uuid::Uuid::nil())
                        } else {
                            match agent.controller.topic(TopicRef::Name(name)) {
                                Some(meta) => topic_entry(&brokers, &meta),
                                None => lookup_or_create(agent, access, &brokers, name, allow_auto_create).await,
                            }
                        }
                    }
                    None => match agent.controller.topic(TopicRef::Id(t.topic_id)) {
                        // Topic ids are not secret: the id is answered, the name is not.
                        Some(meta) if !describe(&meta.name) => denied(None, t.topic_id),
                        Some(meta) => topic_entry(&brokers, &meta),
                        None => error_entry(None, t.topic_id, ResponseError::UnknownTopicId.code()),
                    },
                };
                out.push(entry);
            }
            out
        }
    };
    if version >= 8 && req.include_topic_authorized_operations {
        for t in topics.iter_mut().filter(|t| t.error_code != ResponseError::TopicAuthorizationFailed.code()) {
            if let Some(name) = &t.name {
                t.topic_authorized_operations = access.authorized_operations(ResourceType::Topic, &name.0);
            }
        }
    }
    // The cluster's operations, v8-10 (later versions ask DescribeCluster).
    let cluster_operations = if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        cluster_authorized_operations(access)
    } else {
        i32::MIN
    };
    MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_operations)
        .with_brokers(
            brokers
                .agents
                .iter()
                .map(|a| {
                    let b = MetadataResponseBroker::default()
                        .with_node_id(BrokerId(a.node_id))
                        .with_host(str_bytes(a.host.clone()))
                        .with_port(a.port);
                    // The rack field exists from v1 on.
                    if version >= 1 { b.with_rack(a.zone.clone().map(str_bytes)) } else { b }
                })
                .collect(),
        )
        .with_cluster_id(if version >= 2 { Some(str_bytes(agent.controller.cluster_id())) } else { None })
        .with_controller_id(me)
        .with_topics(topics)
}

/// Kafka's authorized-operations field of the cluster: its operations the client may do if it
/// may DESCRIBE it, else none.
fn cluster_authorized_operations(access: &Access<'_>) -> i32 {
    if access.check_cluster(AclOperation::Describe) { access.authorized_operations(ResourceType::Cluster, CLUSTER_NAME) } else { 0 }
}

async fn lookup_or_create(
    agent: &Agent,
    access: &Access<'_>,
    brokers: &Brokers,
    name: &str,
    allow_auto_create: bool,
) -> MetadataResponseTopic {
    let nil = uuid::Uuid::nil();
    // Auto-creation needs CREATE on the cluster or on the topic.
    if allow_auto_create
        && !access.allows(AclOperation::Create, ResourceType::Cluster, CLUSTER_NAME)
        && !access.check(AclOperation::Create, ResourceType::Topic, name)
    {
        return error_entry(Some(name), nil, ResponseError::TopicAuthorizationFailed.code());
    }
    // Kafka's internal topics are created as Kafka lays them out, not as ordinary topics.
    if is_internal_topic(name) {
        if !allow_auto_create || internal_topic_layout(name).is_none() {
            return error_entry(Some(name), nil, ResponseError::UnknownTopicOrPartition.code());
        }
        return match internal_topics::create(&agent.controller, name).await {
            Ok(()) => match agent.controller.topic(TopicRef::Name(name)) {
                Some(meta) => topic_entry(brokers, &meta),
                None => error_entry(Some(name), nil, ResponseError::LeaderNotAvailable.code()),
            },
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "creating Kafka's internal topic failed");
                error_entry(Some(name), nil, ResponseError::LeaderNotAvailable.code())
            }
        };
    }
    if let Err(e) = validate_topic_name(name) {
        return error_entry(Some(name), nil, controller_code(&e));
    }
    if !allow_auto_create {
        return error_entry(Some(name), nil, ResponseError::UnknownTopicOrPartition.code());
    }
    let req = CreateTopic {
        name: name.to_string(),
        partitions: -1,
        replication_factor: -1,
        configs: Default::default(),
        validate_only: false,
    };
    match agent.controller.create_topic(req).await {
        Ok(meta) => topic_entry(brokers, &meta),
        Err(ControllerError::TopicAlreadyExists(_)) => match agent.controller.topic(TopicRef::Name(name)) {
            Some(meta) => topic_entry(brokers, &meta),
            None => error_entry(Some(name), nil, ResponseError::LeaderNotAvailable.code()),
        },
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-create failed");
            error_entry(Some(name), nil, ResponseError::LeaderNotAvailable.code())
        }
    }
}

/// DescribeCluster's endpoint type for brokers (2 asks for the KRaft controllers).
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn describe_cluster(
    agent: &Agent,
    access: &Access<'_>,
    req: DescribeClusterRequest,
    listener: &ListenerAddress,
) -> DescribeClusterResponse {
    let me = BrokerId(agent.settings.node_id);
    let resp = DescribeClusterResponse::default()
        .with_endpoint_type(req.endpoint_type)
        .with_cluster_id(str_bytes(agent.controller.cluster_id()));
    if req.endpoint_type != ENDPOINT_TYPE_BROKERS {
        return resp.with_error_code(ResponseError::UnsupportedEndpointType.code()).with_error_message(Some(str_bytes(format!(
            "endpoint type {} is not served: sidestream has brokers only",
            req.endpoint_type
        ))));
    }
    let brokers = Brokers::for_client(agent, listener, "");
    let operations = if req.include_cluster_authorized_operations { cluster_authorized_operations(access) } else { i32::MIN };
    resp.with_error_message(None).with_controller_id(me).with_cluster_authorized_operations(operations).with_brokers(
        brokers
            .agents
            .iter()
            .map(|a| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(a.node_id))
                    .with_host(str_bytes(a.host.clone()))
                    .with_port(a.port)
                    .with_rack(a.zone.clone().map(str_bytes))
            })
            .collect(),
    )
}

/// Kafka's `max.request.partition.size.limit` default: partitions per DescribeTopicPartitions
/// response, whatever the client asks for.
const DESCRIBE_PARTITIONS_MAX: i32 = 2000;

/// One topic of a DescribeTopicPartitions page: its partitions `start..end`, or unknown.
#[derive(Debug, PartialEq, Eq)]
enum PageEntry<'a> {
    Topic { name: &'a str, start: i32, end: i32 },
    Unknown(&'a str),
}

/// Kafka's paging (DescribeTopicPartitionsRequestHandler): topics sorted by name from the
/// cursor's topic (at the cursor's partition), at most `limit` partitions; the next cursor
/// points at the first partition left out. `topics` are (name, partition count if it exists);
/// unknown topics are listed only when named by the client (`listed`).
fn describe_page<'a>(
    mut topics: Vec<(&'a str, Option<i32>)>,
    cursor: Option<(&str, i32)>,
    limit: i32,
    listed: bool,
) -> (Vec<PageEntry<'a>>, Option<(&'a str, i32)>) {
    topics.sort_unstable();
    topics.dedup();
    let mut remaining = limit.clamp(1, DESCRIBE_PARTITIONS_MAX);
    let mut page = Vec::new();
    for (name, partitions) in topics.into_iter().filter(|(n, _)| cursor.is_none_or(|(c, _)| *n >= c)) {
        if remaining == 0 {
            return (page, Some((name, 0)));
        }
        let Some(count) = partitions else {
            if listed {
                page.push(PageEntry::Unknown(name));
            }
            continue;
        };
        let start = match cursor {
            Some((c, p)) if c == name => p.min(count),
            _ => 0,
        };
        let end = count.min(start.saturating_add(remaining));
        page.push(PageEntry::Topic { name, start, end });
        remaining -= end - start;
        if end < count {
            return (page, Some((name, end)));
        }
    }
    (page, None)
}

pub fn describe_topic_partitions(
    agent: &Agent,
    access: &Access<'_>,
    req: DescribeTopicPartitionsRequest,
    client: &ClientInfo,
    listener: &ListenerAddress,
) -> DescribeTopicPartitionsResponse {
    let brokers = Brokers::for_client(agent, listener, &client.client_id);
    let listed = !req.topics.is_empty();
    let names: Vec<String> = if listed {
        req.topics.iter().map(|t| t.name.0.to_string()).collect()
    } else {
        agent.controller.topics().iter().map(|t| t.name.clone()).collect()
    };
    let cursor = req.cursor.as_ref().map(|c| (c.topic_name.0.to_string(), c.partition_index));
    let invalid = match &cursor {
        Some((_, p)) if *p < 0 => Some(format!("cursor partition index {p} is negative")),
        Some((t, _)) if listed && !names.contains(t) => Some(format!("the topic list should contain the cursor topic {t}")),
        _ => None,
    };
    if let Some(why) = invalid {
        // Kafka answers an invalid request with the error on every requested topic.
        tracing::debug!(why, "DescribeTopicPartitions refused");
        let topics = names
            .iter()
            .map(|n| {
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_name(Some(TopicName(str_bytes(n.clone()))))
            })
            .collect();
        return DescribeTopicPartitionsResponse::default().with_topics(topics);
    }
    // DESCRIBE on each topic: a named one refused is answered TOPIC_AUTHORIZATION_FAILED (whether it
    // exists is not disclosed), the others of a listing are left out.
    let (names, refused): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| {
        if listed {
            access.check(AclOperation::Describe, ResourceType::Topic, n)
        } else {
            access.allows(AclOperation::Describe, ResourceType::Topic, n)
        }
    });
    let metas: Vec<Option<Arc<TopicMeta>>> = names.iter().map(|n| agent.controller.topic(TopicRef::Name(n))).collect();
    let input = names.iter().zip(&metas).map(|(n, m)| (n.as_str(), m.as_ref().map(|m| m.partitions))).collect();
    let (page, next) = describe_page(input, cursor.as_ref().map(|(t, p)| (t.as_str(), *p)), req.response_partition_limit, listed);
    let mut refused: Vec<&String> = refused.iter().filter(|n| cursor.as_ref().is_none_or(|(c, _)| n.as_str() >= c.as_str())).collect();
    refused.sort();
    refused.dedup();
    let mut topics: Vec<DescribeTopicPartitionsResponseTopic> = page
        .into_iter()
        .map(|entry| match entry {
            PageEntry::Unknown(name) => DescribeTopicPartitionsResponseTopic::default()
                .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                .with_name(Some(TopicName(str_bytes(name)))),
            PageEntry::Topic { name, start, end } => {
                let id = names.iter().zip(&metas).find(|(n, _)| *n == name).and_then(|(_, m)| m.as_ref()).map(|m| m.id);
                DescribeTopicPartitionsResponseTopic::default()
                    .with_is_internal(is_internal_topic(name))
                    .with_name(Some(TopicName(str_bytes(name))))
                    .with_topic_id(id.unwrap_or_default())
                    .with_partitions(
                        (start..end)
                            .map(|p| {
                                let leader = BrokerId(brokers.leader(id.unwrap_or_default(), p));
                                DescribeTopicPartitionsResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_leader_id(leader)
                                    .with_leader_epoch(LEADER_EPOCH)
                                    .with_replica_nodes(vec![leader])
                                    .with_isr_nodes(vec![leader])
                                    .with_eligible_leader_replicas(Some(Vec::new()))
                                    .with_last_known_elr(Some(Vec::new()))
                            })
                            .collect(),
                    )
            }
        })
        .collect();
    topics.extend(refused.into_iter().map(|name| {
        DescribeTopicPartitionsResponseTopic::default()
            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
            .with_name(Some(TopicName(str_bytes(name.clone()))))
    }));
    for t in &mut topics {
        if let Some(name) = &t.name {
            t.topic_authorized_operations = access.authorized_operations(ResourceType::Topic, &name.0);
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next.map(|(t, p)| Cursor::default().with_topic_name(TopicName(str_bytes(t))).with_partition_index(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, start: i32, end: i32) -> PageEntry<'_> {
        PageEntry::Topic { name, start, end }
    }

    #[test]
    fn pages_follow_the_cursor_in_name_order() {
        let all = || vec![("b", Some(3)), ("a", Some(2)), ("c", Some(1))];
        assert_eq!(describe_page(all(), None, 100, false), (vec![topic("a", 0, 2), topic("b", 0, 3), topic("c", 0, 1)], None));
        // A page that ends inside a topic, then one that ends exactly at a topic's end.
        assert_eq!(describe_page(all(), None, 3, false), (vec![topic("a", 0, 2), topic("b", 0, 1)], Some(("b", 1))));
        assert_eq!(describe_page(all(), Some(("b", 1)), 2, false), (vec![topic("b", 1, 3)], Some(("c", 0))));
        assert_eq!(describe_page(all(), Some(("c", 0)), 2, false), (vec![topic("c", 0, 1)], None));
        // A limit below 1 still makes progress.
        assert_eq!(describe_page(all(), None, 0, false).1, Some(("a", 1)));
    }

    #[test]
    fn unknown_topics_are_listed_only_when_named() {
        let input = || vec![("x", None), ("a", Some(1)), ("a", Some(1))];
        assert_eq!(describe_page(input(), None, 10, true), (vec![topic("a", 0, 1), PageEntry::Unknown("x")], None));
        assert_eq!(describe_page(input(), None, 10, false), (vec![topic("a", 0, 1)], None));
    }
}
