//! DescribeConfigs for topics: the configs set on the topic (source DYNAMIC_TOPIC_CONFIG) and
//! Kafka's defaults for the rest (source DEFAULT_CONFIG), so `kafka-topics --describe`, the
//! AdminClient and kadm see what a Kafka broker shows. Broker and other resource types are not
//! served: they get INVALID_REQUEST with a message saying so. A topic needs DESCRIBE_CONFIGS
//! (TOPIC_AUTHORIZATION_FAILED, before it is looked up).
//!
//! Must not touch: the controller's validation of config names (it owns which names exist).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::{TopicMeta, TopicRef};

/// Kafka's ConfigResource.Type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's DescribeConfigsResponse.ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's ConfigDef types, as DescribeConfigs v3+ reports them.
#[derive(Clone, Copy)]
enum Type {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// Kafka 4.4's topic config defaults (LogConfig / ServerLogConfigs), for the configs Sidestream
/// knows. `max.message.bytes` comes from `[topics] max_message_bytes` instead.
const DEFAULTS: &[(&str, &str, Type)] = &[
    ("cleanup.policy", "delete", Type::List),
    ("compression.gzip.level", "-1", Type::Int),
    ("compression.lz4.level", "9", Type::Int),
    ("compression.type", "producer", Type::String),
    ("compression.zstd.level", "3", Type::Int),
    ("delete.retention.ms", "86400000", Type::Long),
    ("file.delete.delay.ms", "60000", Type::Long),
    ("flush.messages", "9223372036854775807", Type::Long),
    ("flush.ms", "9223372036854775807", Type::Long),
    ("index.interval.bytes", "4096", Type::Int),
    ("local.retention.bytes", "-2", Type::Long),
    ("local.retention.ms", "-2", Type::Long),
    ("max.compaction.lag.ms", "9223372036854775807", Type::Long),
    ("max.message.bytes", "", Type::Int),
    ("message.timestamp.after.max.ms", "3600000", Type::Long),
    ("message.timestamp.before.max.ms", "9223372036854775807", Type::Long),
    ("message.timestamp.type", "CreateTime", Type::String),
    ("min.cleanable.dirty.ratio", "0.5", Type::Double),
    ("min.compaction.lag.ms", "0", Type::Long),
    ("min.insync.replicas", "1", Type::Int),
    ("preallocate", "false", Type::Boolean),
    ("remote.storage.enable", "false", Type::Boolean),
    ("retention.bytes", "-1", Type::Long),
    ("retention.ms", "604800000", Type::Long),
    ("segment.bytes", "1073741824", Type::Int),
    ("segment.index.bytes", "10485760", Type::Int),
    ("segment.jitter.ms", "0", Type::Long),
    ("segment.ms", "604800000", Type::Long),
    ("unclean.leader.election.enable", "false", Type::Boolean),
];

/// One topic's configs: every default, overridden by what is set on the topic, plus any set
/// config without a default here. Sorted by name. `(name, value, source, type)`.
fn topic_configs(topic: &TopicMeta, max_message_bytes: i32) -> Vec<(String, String, i8, i8)> {
    let mut out: Vec<(String, String, i8, i8)> = DEFAULTS
        .iter()
        .map(|(name, default, ty)| {
            let default = if *name == "max.message.bytes" { max_message_bytes.to_string() } else { default.to_string() };
            match topic.configs.get(*name) {
                Some(v) => (name.to_string(), v.clone(), SOURCE_TOPIC, *ty as i8),
                None => (name.to_string(), default, SOURCE_DEFAULT, *ty as i8),
            }
        })
        .collect();
    for (k, v) in &topic.configs {
        if !DEFAULTS.iter().any(|(name, _, _)| name == k) {
            out.push((k.clone(), v.clone(), SOURCE_TOPIC, Type::String as i8));
        }
    }
    out.sort();
    out
}

pub fn describe_configs(agent: &Agent, access: &Access<'_>, version: i16, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let result = DescribeConfigsResult::default().with_resource_type(r.resource_type).with_resource_name(r.resource_name.clone());
            if r.resource_type != RESOURCE_TOPIC {
                return result.with_error_code(ResponseError::InvalidRequest.code()).with_error_message(Some(str_bytes(format!(
                    "resource type {} is not served by sidestream (only topics, type 2)",
                    r.resource_type
                ))));
            }
            if !access.check(AclOperation::DescribeConfigs, ResourceType::Topic, &name) {
                return result
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes(format!("DESCRIBE_CONFIGS on topic {name} is not allowed"))));
            }
            let Some(topic) = agent.controller.topic(TopicRef::Name(&name)) else {
                return result
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_error_message(Some(str_bytes(format!("topic {name} does not exist"))));
            };
            let wanted = |k: &str| r.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|w| &**w == k));
            let configs = topic_configs(&topic, agent.settings.topics.max_message_bytes)
                .into_iter()
                .filter(|(k, ..)| wanted(k))
                .map(|(k, v, source, ty)| {
                    let synonyms = if req.include_synonyms {
                        vec![
                            DescribeConfigsSynonym::default()
                                .with_name(str_bytes(k.clone()))
                                .with_value(Some(str_bytes(v.clone())))
                                .with_source(source),
                        ]
                    } else {
                        Vec::new()
                    };
                    let mut c = DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(k))
                        .with_value(Some(str_bytes(v)))
                        .with_read_only(false)
                        .with_config_source(source)
                        .with_is_sensitive(false)
                        .with_synonyms(synonyms);
                    if version >= 3 {
                        c = c.with_config_type(ty).with_documentation(None);
                    }
                    c
                })
                .collect();
            result.with_error_code(0).with_error_message(None).with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn topic(configs: &[(&str, &str)]) -> TopicMeta {
        TopicMeta {
            id: uuid::Uuid::from_u128(1),
            name: "t".into(),
            partitions: 1,
            configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn defaults_unless_set_on_the_topic() {
        let got = topic_configs(&topic(&[("retention.ms", "1000")]), 2000);
        let find = |k: &str| got.iter().find(|(n, ..)| n == k).cloned();
        assert_eq!(find("retention.ms"), Some(("retention.ms".into(), "1000".into(), SOURCE_TOPIC, Type::Long as i8)));
        assert_eq!(find("cleanup.policy"), Some(("cleanup.policy".into(), "delete".into(), SOURCE_DEFAULT, Type::List as i8)));
        assert_eq!(find("max.message.bytes").map(|c| c.1), Some("2000".into()));
        assert_eq!(got.len(), DEFAULTS.len());
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
    }

    #[test]
    fn a_set_config_without_a_default_is_listed() {
        let got = topic_configs(&topic(&[("segment.jitter.ms", "5"), ("leader.replication.throttled.replicas", "*")]), 1);
        assert_eq!(got.len(), DEFAULTS.len() + 1);
        assert!(got.iter().any(|(n, v, s, _)| n == "leader.replication.throttled.replicas" && v == "*" && *s == SOURCE_TOPIC));
    }
}
