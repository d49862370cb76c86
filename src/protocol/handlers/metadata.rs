//! Metadata: this agent is the only broker, the controller and the leader of every partition.
//! Unknown topics are created when the client allows it and `[topics] auto_create` is on.
//! DescribeCluster (the AdminClient's `describeCluster`) tells the same story.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse, TopicName,
};

use super::str_bytes;
use crate::agent::Agent;
use crate::agent::fetch::LEADER_EPOCH;
use crate::controller::{ControllerError, CreateTopic, TopicMeta, TopicRef, validate_topic_name};
use crate::protocol::error::controller_code;

fn topic_entry(agent: &Agent, t: &TopicMeta) -> MetadataResponseTopic {
    let me = BrokerId(agent.settings.node_id);
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(t.name.clone()))))
        .with_topic_id(t.id)
        .with_partitions(
            (0..t.partitions)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(me)
                        .with_leader_epoch(LEADER_EPOCH)
                        .with_replica_nodes(vec![me])
                        .with_isr_nodes(vec![me])
                })
                .collect(),
        )
}

fn error_entry(name: Option<&str>, id: uuid::Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
}

pub async fn handle(agent: &Agent, version: i16, req: MetadataRequest) -> MetadataResponse {
    let me = BrokerId(agent.settings.node_id);
    let allow_auto_create = (version < 4 || req.allow_auto_topic_creation) && agent.settings.topics.auto_create;
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None, // v0: empty means all
        Some(t) => Some(t),
    };
    let topics = match requested {
        None => agent.controller.topics().iter().map(|t| topic_entry(agent, t)).collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let entry = match t.name {
                    Some(name) => {
                        let name: &str = &name.0;
                        match agent.controller.topic(TopicRef::Name(name)) {
                            Some(meta) => topic_entry(agent, &meta),
                            None => lookup_or_create(agent, name, allow_auto_create).await,
                        }
                    }
                    None => match agent.controller.topic(TopicRef::Id(t.topic_id)) {
                        Some(meta) => topic_entry(agent, &meta),
                        None => error_entry(None, t.topic_id, ResponseError::UnknownTopicId.code()),
                    },
                };
                out.push(entry);
            }
            out
        }
    };
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(me)
                .with_host(str_bytes(agent.settings.advertised_host.clone()))
                .with_port(agent.settings.advertised_port),
        ])
        .with_cluster_id(if version >= 2 { Some(str_bytes(agent.controller.cluster_id())) } else { None })
        .with_controller_id(me)
        .with_topics(topics)
}

async fn lookup_or_create(agent: &Agent, name: &str, allow_auto_create: bool) -> MetadataResponseTopic {
    let nil = uuid::Uuid::nil();
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
        Ok(meta) => topic_entry(agent, &meta),
        Err(ControllerError::TopicAlreadyExists(_)) => match agent.controller.topic(TopicRef::Name(name)) {
            Some(meta) => topic_entry(agent, &meta),
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

pub fn describe_cluster(agent: &Agent, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let me = BrokerId(agent.settings.node_id);
    let resp = DescribeClusterResponse::default()
        .with_endpoint_type(req.endpoint_type)
        .with_cluster_id(str_bytes(agent.controller.cluster_id()));
    if req.endpoint_type != ENDPOINT_TYPE_BROKERS {
        return resp.with_error_code(ResponseError::UnsupportedEndpointType.code()).with_error_message(Some(str_bytes(
            format!("endpoint type {} is not served: sidestream has brokers only", req.endpoint_type),
        )));
    }
    resp.with_error_message(None).with_controller_id(me).with_brokers(vec![
        DescribeClusterBroker::default()
            .with_broker_id(me)
            .with_host(str_bytes(agent.settings.advertised_host.clone()))
            .with_port(agent.settings.advertised_port)
            .with_rack(None),
    ])
}
