//! `sidestream topic list|describe|create|delete|alter`, as `kafka-topics.sh` does them:
//! Metadata and DescribeConfigs to show, CreateTopics, DeleteTopics, CreatePartitions and
//! IncrementalAlterConfigs to change (sent to the controller Metadata names).
//!
//! Must not touch: groups and records; a topic command reads no data.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::AdminError;
use super::client::{Client, Node, PartitionMeta, kafka_result};

/// DescribeConfigs / IncrementalAlterConfigs resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// DescribeConfigs config source of a value set on the topic itself.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// One topic of `topic list`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicListing {
    pub name: String,
    pub internal: bool,
    pub partitions: usize,
}

/// Every topic, by name.
pub async fn list(c: &mut Client, exclude_internal: bool) -> Result<Vec<TopicListing>, AdminError> {
    let r = c.metadata(None).await?;
    let mut out: Vec<TopicListing> = r
        .topics
        .into_iter()
        .filter(|t| t.error_code == 0 && !(exclude_internal && t.is_internal))
        .filter_map(|t| Some(TopicListing { name: t.name?.0.to_string(), internal: t.is_internal, partitions: t.partitions.len() }))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn render_list(topics: &[TopicListing]) -> String {
    topics.iter().map(|t| format!("{}\n", t.name)).collect()
}

/// One topic of `topic describe`: its partitions and the configs set on it.
#[derive(Debug, Clone, Serialize)]
pub struct TopicDescription {
    pub name: String,
    pub topic_id: String,
    pub internal: bool,
    pub replication_factor: usize,
    pub partitions: Vec<PartitionMeta>,
    /// The configs set on the topic (source DYNAMIC_TOPIC_CONFIG), not the defaults.
    pub configs: BTreeMap<String, String>,
}

/// `topics` (all when empty); an unknown topic is an error.
pub async fn describe(c: &mut Client, topics: &[String]) -> Result<Vec<TopicDescription>, AdminError> {
    let r = c.metadata(if topics.is_empty() { None } else { Some(topics) }).await?;
    let mut out = Vec::new();
    for t in r.topics {
        let Some(topic) = t.name.map(|n| n.0.to_string()) else { continue };
        kafka_result("Metadata", &format!("topic '{topic}'"), t.error_code, None)?;
        let partitions = PartitionMeta::all(&t.partitions);
        out.push(TopicDescription {
            replication_factor: partitions.first().map_or(0, |p| p.replicas.len()),
            topic_id: t.topic_id.to_string(),
            internal: t.is_internal,
            configs: BTreeMap::new(),
            name: topic,
            partitions,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if !out.is_empty() && c.supports::<DescribeConfigsRequest>() {
        let version = c.version::<DescribeConfigsRequest>(4)?;
        let req = DescribeConfigsRequest::default().with_resources(
            out.iter()
                .map(|t| {
                    DescribeConfigsResource::default()
                        .with_resource_type(TOPIC_RESOURCE)
                        .with_resource_name(StrBytes::from_string(t.name.clone()))
                        .with_configuration_keys(None)
                })
                .collect(),
        );
        let r = c.send(Node::Bootstrap, version, &req).await?;
        for res in r.results {
            let topic = res.resource_name.to_string();
            kafka_result("DescribeConfigs", &format!("topic '{topic}'"), res.error_code, res.error_message.map(|m| m.to_string()))?;
            if let Some(t) = out.iter_mut().find(|t| t.name == topic) {
                t.configs = res
                    .configs
                    .into_iter()
                    .filter(|e| e.config_source == DYNAMIC_TOPIC_CONFIG)
                    .map(|e| {
                        (
                            e.name.to_string(),
                            if e.is_sensitive { "(sensitive)".into() } else { e.value.map(|v| v.to_string()).unwrap_or_default() },
                        )
                    })
                    .collect();
            }
        }
    }
    Ok(out)
}

/// As `kafka-topics.sh --describe` prints it.
pub fn render_describe(topics: &[TopicDescription]) -> String {
    let ids = |v: &[i32]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let mut out = String::new();
    for t in topics {
        let configs = t.configs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        out.push_str(&format!(
            "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}\n",
            t.name,
            t.topic_id,
            t.partitions.len(),
            t.replication_factor,
            configs
        ));
        for p in &t.partitions {
            out.push_str(&format!(
                "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}\n",
                t.name,
                p.partition,
                if p.leader < 0 { "none".to_string() } else { p.leader.to_string() },
                ids(&p.replicas),
                ids(&p.isr)
            ));
        }
    }
    out
}

/// What `topic create` made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub name: String,
    pub topic_id: String,
    pub partitions: i32,
    pub replication_factor: i16,
}

/// Creates `topic`; None leaves the partitions or the replication factor to the broker's
/// default (`num.partitions`, `default.replication.factor`).
pub async fn create(
    c: &mut Client,
    topic: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> Result<Created, AdminError> {
    let version = c.version::<CreateTopicsRequest>(7)?;
    if version < 4 && (partitions.is_none() || replication_factor.is_none()) {
        return Err(AdminError::Invalid("this broker needs --partitions and --replication-factor".into()));
    }
    let t = CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions.unwrap_or(-1))
        .with_replication_factor(replication_factor.unwrap_or(-1))
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect(),
        );
    let timeout_ms = i32::try_from(c.request_timeout().as_millis()).unwrap_or(i32::MAX);
    let req = CreateTopicsRequest::default().with_topics(vec![t]).with_timeout_ms(timeout_ms);
    let node = c.controller();
    let r = c.send(node, version, &req).await?;
    let res = r.topics.into_iter().next().ok_or_else(|| AdminError::NotFound(format!("no result for topic '{topic}'")))?;
    kafka_result("CreateTopics", &format!("topic '{topic}'"), res.error_code, res.error_message.map(|m| m.to_string()))?;
    Ok(Created {
        name: topic.to_string(),
        topic_id: res.topic_id.to_string(),
        partitions: if res.num_partitions > 0 { res.num_partitions } else { partitions.unwrap_or(-1) },
        replication_factor: if res.replication_factor > 0 { res.replication_factor } else { replication_factor.unwrap_or(-1) },
    })
}

/// Deletes `topics`; the first that fails is the error (after all were asked for).
pub async fn delete(c: &mut Client, topics: &[String]) -> Result<Vec<String>, AdminError> {
    let version = c.version::<DeleteTopicsRequest>(6)?;
    let timeout_ms = i32::try_from(c.request_timeout().as_millis()).unwrap_or(i32::MAX);
    let mut req = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
    if version >= 6 {
        req.topics = topics.iter().map(|t| DeleteTopicState::default().with_name(Some(name(t)))).collect();
    } else {
        req.topic_names = topics.iter().map(|t| name(t)).collect();
    }
    let node = c.controller();
    let r = c.send(node, version, &req).await?;
    let mut deleted = Vec::new();
    for res in r.responses {
        let topic = res.name.map(|n| n.0.to_string()).unwrap_or_default();
        kafka_result("DeleteTopics", &format!("topic '{topic}'"), res.error_code, res.error_message.map(|m| m.to_string()))?;
        deleted.push(topic);
    }
    Ok(deleted)
}

/// What `topic alter` changed.
#[derive(Debug, Clone, Serialize)]
pub struct Altered {
    pub name: String,
    /// The new partition count, when it was asked for.
    pub partitions: Option<i32>,
    pub set_configs: BTreeMap<String, String>,
    pub deleted_configs: Vec<String>,
}

/// Raises the partition count to `partitions` (CreatePartitions), then sets and deletes
/// configs (IncrementalAlterConfigs).
pub async fn alter(
    c: &mut Client,
    topic: &str,
    partitions: Option<i32>,
    set: &[(String, String)],
    delete: &[String],
) -> Result<Altered, AdminError> {
    if partitions.is_none() && set.is_empty() && delete.is_empty() {
        return Err(AdminError::Invalid("nothing to alter: give --partitions, --config or --delete-config".into()));
    }
    let node = c.controller();
    let timeout_ms = i32::try_from(c.request_timeout().as_millis()).unwrap_or(i32::MAX);
    if let Some(count) = partitions {
        let version = c.version::<CreatePartitionsRequest>(3)?;
        let req = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default().with_name(name(topic)).with_count(count).with_assignments(None)])
            .with_timeout_ms(timeout_ms);
        let r = c.send(node, version, &req).await?;
        for res in r.results {
            kafka_result("CreatePartitions", &format!("topic '{topic}'"), res.error_code, res.error_message.map(|m| m.to_string()))?;
        }
    }
    if !set.is_empty() || !delete.is_empty() {
        let version = c.version::<IncrementalAlterConfigsRequest>(1)?;
        let configs = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(OP_SET)
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .chain(delete.iter().map(|k| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(OP_DELETE)
                    .with_value(None)
            }))
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_string(topic.to_string()))
                .with_configs(configs),
        ]);
        let r = c.send(node, version, &req).await?;
        for res in r.responses {
            kafka_result("IncrementalAlterConfigs", &format!("topic '{topic}'"), res.error_code, res.error_message.map(|m| m.to_string()))?;
        }
    }
    Ok(Altered {
        name: topic.to_string(),
        partitions,
        set_configs: set.iter().cloned().collect(),
        deleted_configs: delete.to_vec(),
    })
}
