//! The config APIs: DescribeConfigs, AlterConfigs and IncrementalAlterConfigs, for topics (the
//! controller's: `TOPIC`), this broker (`BROKER`, by its node id or the cluster default "") and
//! its loggers (`BROKER_LOGGER`), as a Kafka 4.4 broker answers them.
//!
//! - Topics: DescribeConfigs shows the configs set on the topic (DYNAMIC_TOPIC_CONFIG) and Kafka's
//!   defaults for the rest (DEFAULT_CONFIG). The alter APIs send the changes to the controller
//!   (`alter_topic_configs`), which validates the resulting set as Kafka does; AlterConfigs
//!   replaces a topic's set, IncrementalAlterConfigs edits it. A topic needs DESCRIBE_CONFIGS or
//!   ALTER_CONFIGS (TOPIC_AUTHORIZATION_FAILED, checked before it is looked up).
//! - Brokers and broker loggers ([`crate::agent::broker_config`]): this agent's settings under
//!   Kafka's names; only the log filter changes at run time. They need DESCRIBE_CONFIGS or
//!   ALTER_CONFIGS on the cluster (CLUSTER_AUTHORIZATION_FAILED).
//!
//! - Client metrics subscriptions (`CLIENT_METRICS`, KIP-714, [`crate::api::client_metrics`]):
//!   the controller's; DescribeConfigs shows the three keys, as set (CLIENT_METRICS_CONFIG) or
//!   at their defaults (DEFAULT_CONFIG), and none for a name never set, the alter APIs send the changes to the controller
//!   (`alter_client_metrics`), which validates them as Kafka does; a subscription left with no
//!   key is deleted. They need DESCRIBE_CONFIGS or ALTER_CONFIGS on the cluster. This agent
//!   applies a change at once; other agents within
//!   [`crate::agent::client_telemetry::RUNTIME_REFRESH_INTERVAL_MS`].
//! - ListConfigResources (KIP-1000, KIP-1142): the subscriptions (v0), and in v1 the topics,
//!   this broker and its loggers too (an empty type list: all four). Other types (GROUP) get
//!   UNSUPPORTED_VERSION, as Kafka answers a type it does not serve.
//!
//! Other resource types get INVALID_REQUEST with a message saying so.
//!
//! Must not touch: the controller's validation of config names (it owns which names exist).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym};
use kafka_protocol::messages::list_config_resources_response::ConfigResource;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ListConfigResourcesRequest, ListConfigResourcesResponse,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::broker_config::{Described, Source};
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::client_metrics::{
    ClientMetricsChange, ClientMetricsResource, INTERVAL_MS, INTERVAL_MS_DEFAULT, MATCH, METRICS, RESOURCE_TYPE as RESOURCE_CLIENT_METRICS,
};
use crate::api::configs::{ConfigOp, ConfigOpKind, ConfigType, TOPIC_CONFIGS, TopicConfigChange, topic_config};
use crate::api::groups::GroupError;
use crate::api::{ControllerError, TopicMeta, TopicRef};
use crate::protocol::error::{controller_code, group_code};

/// Kafka's ConfigResource.Type values.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_BROKER_LOGGER: i8 = 8;
const RESOURCE_GROUP: i8 = 32;
/// Resources answered per request.
const RESOURCES_PER_REQUEST_MAX: usize = 10_000;

/// One topic's configs: every default, overridden by what is set on the topic, plus any set
/// config without a default here. Sorted by name.
fn topic_configs(topic: &TopicMeta, max_message_bytes: i32) -> Vec<Described> {
    let config = |name: &str, value: &str, source: Source, ty: ConfigType| Described {
        name: name.to_string(),
        value: Some(value.to_string()),
        source,
        read_only: false,
        ty,
        synonyms: vec![(name.to_string(), Some(value.to_string()), source)],
    };
    let mut out: Vec<Described> = TOPIC_CONFIGS
        .iter()
        .filter_map(|d| {
            let default = if d.name == "max.message.bytes" { Some(max_message_bytes.to_string()) } else { d.default.map(str::to_string) };
            match topic.configs.get(d.name) {
                Some(v) => Some(config(d.name, v, Source::Topic, d.ty)),
                None => Some(config(d.name, &default?, Source::Default, d.ty)),
            }
        })
        .collect();
    for (k, v) in &topic.configs {
        if topic_config(k).is_none() {
            out.push(config(k, v, Source::Topic, ConfigType::String));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn describe_configs(agent: &Agent, access: &Access<'_>, version: i16, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    // The subscriptions, read from the controller once if any is asked for.
    let subscriptions = if req.resources.iter().any(|r| r.resource_type == RESOURCE_CLIENT_METRICS) {
        Some(agent.controller.all_client_metrics().await)
    } else {
        None
    };
    let mut results = Vec::with_capacity(req.resources.len().min(RESOURCES_PER_REQUEST_MAX));
    for r in req.resources.into_iter().take(RESOURCES_PER_REQUEST_MAX) {
        let found = describe_resource(agent, access, r.resource_type, &r.resource_name, subscriptions.as_ref()).await;
        results.push({
            let result = DescribeConfigsResult::default().with_resource_type(r.resource_type).with_resource_name(r.resource_name.clone());
            let wanted = |k: &str| r.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|w| &**w == k));
            let configs = match found {
                Ok(configs) => configs,
                Err((code, message)) => {
                    results.push(result.with_error_code(code).with_error_message(message.map(str_bytes)));
                    continue;
                }
            };
            let configs = configs
                .into_iter()
                .filter(|d| wanted(&d.name))
                .map(|d| {
                    let synonyms = if req.include_synonyms {
                        d.synonyms
                            .into_iter()
                            .map(|(name, value, source)| {
                                DescribeConfigsSynonym::default()
                                    .with_name(str_bytes(name))
                                    .with_value(value.map(str_bytes))
                                    .with_source(source as i8)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let mut c = DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(d.name))
                        .with_value(d.value.map(str_bytes))
                        .with_read_only(d.read_only)
                        .with_config_source(d.source as i8)
                        .with_is_sensitive(false)
                        .with_synonyms(synonyms);
                    if version >= 3 {
                        c = c.with_config_type(d.ty as i8).with_documentation(None);
                    }
                    c
                })
                .collect();
            result.with_error_code(0).with_error_message(None).with_configs(configs)
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// A refusal: the error code and Kafka's message.
type Refusal = (i16, Option<String>);

/// One subscription's configs as Kafka 4.4 shows them: its three keys, each as set
/// (CLIENT_METRICS_CONFIG) or at its default (DEFAULT_CONFIG).
fn client_metrics_configs(r: &ClientMetricsResource) -> Vec<Described> {
    let default_interval = INTERVAL_MS_DEFAULT.to_string();
    [(METRICS, ""), (INTERVAL_MS, default_interval.as_str()), (MATCH, "")]
        .into_iter()
        .map(|(k, default)| {
            let (value, source) = match r.configs.get(k) {
                Some(v) => (v.clone(), Source::ClientMetrics),
                None => (default.to_string(), Source::Default),
            };
            Described {
                name: k.to_string(),
                value: Some(value),
                source,
                read_only: false,
                ty: if k == INTERVAL_MS { ConfigType::Int } else { ConfigType::List },
                synonyms: Vec::new(),
            }
        })
        .collect()
}

fn cluster_access(access: &Access<'_>, op: AclOperation) -> Result<(), Refusal> {
    if access.check(op, ResourceType::Cluster, crate::api::acl::CLUSTER_NAME) {
        Ok(())
    } else {
        Err((ResponseError::ClusterAuthorizationFailed.code(), None))
    }
}

/// The client metrics subscriptions as loaded for a request.
type Subscriptions = Result<Vec<ClientMetricsResource>, ControllerError>;

/// One resource's configs, or why they are not shown.
async fn describe_resource(
    agent: &Agent,
    access: &Access<'_>,
    resource_type: i8,
    name: &str,
    subscriptions: Option<&Subscriptions>,
) -> Result<Vec<Described>, Refusal> {
    match resource_type {
        RESOURCE_CLIENT_METRICS => {
            cluster_access(access, AclOperation::DescribeConfigs)?;
            if name.is_empty() {
                return Err(invalid("Client metrics subscription name must not be empty".into()));
            }
            match subscriptions {
                Some(Ok(all)) => Ok(all.iter().find(|r| r.name == name).map(client_metrics_configs).unwrap_or_default()),
                Some(Err(e)) => Err(refusal(e, name)),
                None => Ok(Vec::new()),
            }
        }
        RESOURCE_TOPIC => {
            if !access.check(AclOperation::DescribeConfigs, ResourceType::Topic, name) {
                return Err((
                    ResponseError::TopicAuthorizationFailed.code(),
                    Some(format!("DESCRIBE_CONFIGS on topic {name} is not allowed")),
                ));
            }
            let topic = agent.controller.topic(TopicRef::Name(name)).ok_or_else(|| unknown_topic(name))?;
            Ok(topic_configs(&topic, agent.settings.topics.max_message_bytes))
        }
        RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => {
            if !access.check(AclOperation::DescribeConfigs, ResourceType::Cluster, crate::api::acl::CLUSTER_NAME) {
                return Err((ResponseError::ClusterAuthorizationFailed.code(), None));
            }
            let node_id = agent.broker_configs.node_id();
            if !name.is_empty() && name.parse::<i32>().ok() != Some(node_id) {
                return Err(invalid(format!("Unexpected broker id, expected {node_id} or empty string, but received {name}")));
            }
            if resource_type == RESOURCE_BROKER { Ok(agent.broker_configs.describe()) } else { Ok(agent.broker_configs.loggers()) }
        }
        RESOURCE_GROUP => {
            if !access.check(AclOperation::DescribeConfigs, ResourceType::Group, name) {
                return Err((ResponseError::GroupAuthorizationFailed.code(), None));
            }
            let (set, defaults) = agent.controller.group_configs(name.to_string()).await.map_err(|e| group_refusal(&e))?;
            Ok(defaults
                .into_iter()
                .map(|(k, default)| {
                    let (value, source) = match set.get(&k) {
                        Some(v) => (v.clone(), Source::DynamicGroup),
                        None => (default, Source::Default),
                    };
                    let ty = if k.ends_with(".ms") || k.ends_with(".limit") { ConfigType::Int } else { ConfigType::String };
                    Described {
                        synonyms: vec![(k.clone(), Some(value.clone()), source)],
                        name: k,
                        value: Some(value),
                        source,
                        read_only: false,
                        ty,
                    }
                })
                .collect())
        }
        t => Err(invalid(format!(
            "resource type {t} is not served by sidestream (topics, brokers, broker loggers, groups and client metrics are)"
        ))),
    }
}

fn group_refusal(e: &GroupError) -> Refusal {
    (group_code(e), Some(e.to_string()))
}

/// A GROUP resource (IncrementalAlterConfigs only, as Kafka): SET and DELETE of its configs.
async fn alter_group(agent: &Agent, access: &Access<'_>, r: &Alteration, replace: bool, validate_only: bool) -> Result<(), Refusal> {
    if !access.check(AclOperation::AlterConfigs, ResourceType::Group, &r.name) {
        return Err((ResponseError::GroupAuthorizationFailed.code(), None));
    }
    if replace {
        return Err(invalid("AlterConfigs does not support the resource type GROUP; use IncrementalAlterConfigs".into()));
    }
    let mut changes = Vec::with_capacity(r.ops.len());
    for (name, op, value) in &r.ops {
        changes.push(match op {
            ConfigOpKind::Set => (name.clone(), Some(value.clone().unwrap_or_default())),
            ConfigOpKind::Delete => (name.clone(), None),
            _ => return Err(invalid(format!("APPEND and SUBTRACT do not apply to group config {name}"))),
        });
    }
    agent.controller.alter_group_configs(r.name.clone(), changes, validate_only).await.map_err(|e| {
        let (code, message) = group_refusal(&e);
        (code, message.map(|m| m.trim_start_matches("invalid config: ").to_string()))
    })
}

fn unknown_topic(name: &str) -> Refusal {
    (ResponseError::UnknownTopicOrPartition.code(), Some(format!("The topic '{name}' does not exist.")))
}

fn invalid(message: String) -> Refusal {
    (ResponseError::InvalidRequest.code(), Some(message))
}

/// A controller error as Kafka words it.
fn refusal(e: &ControllerError, resource: &str) -> Refusal {
    let message = match e {
        ControllerError::UnknownTopicOrPartition => return unknown_topic(resource),
        ControllerError::InvalidConfig(m) | ControllerError::InvalidRequest(m) => m.clone(),
        other => other.to_string(),
    };
    (controller_code(e), Some(message))
}

/// One resource of AlterConfigs or IncrementalAlterConfigs: its type, name and operations,
/// or why it is refused before anything else is looked at.
struct Alteration {
    resource_type: i8,
    name: String,
    ops: Vec<(String, ConfigOpKind, Option<String>)>,
    refused: Option<Refusal>,
}

/// Each resource's answer, as the response type `$ty` (one per API, same fields).
macro_rules! responses {
    ($ty:ty, $resources:expr, $results:expr) => {
        $resources
            .iter()
            .zip($results)
            .map(|(r, (code, message))| {
                <$ty>::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name.clone())
                    .with_error_code(code)
                    .with_error_message(message.map(str_bytes))
            })
            .collect()
    };
}

pub async fn alter_configs(agent: &Agent, access: &Access<'_>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let resources: Vec<Alteration> = req
        .resources
        .iter()
        .map(|r| Alteration {
            resource_type: r.resource_type,
            name: r.resource_name.to_string(),
            ops: r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), ConfigOpKind::Set, c.value.as_ref().map(|v| v.to_string())))
                .collect(),
            refused: None,
        })
        .collect();
    let results = alter(agent, access, &resources, true, req.validate_only).await;
    AlterConfigsResponse::default().with_responses(responses!(AlterConfigsResourceResponse, req.resources, results))
}

pub async fn incremental_alter_configs(
    agent: &Agent,
    access: &Access<'_>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let resources: Vec<Alteration> = req
        .resources
        .iter()
        .map(|r| {
            let mut refused = None;
            let ops = r
                .configs
                .iter()
                .filter_map(|c| {
                    let op = match c.config_operation {
                        0 => ConfigOpKind::Set,
                        1 => ConfigOpKind::Delete,
                        2 => ConfigOpKind::Append,
                        3 => ConfigOpKind::Subtract,
                        other => {
                            refused = Some(invalid(format!("Unknown alter config operation {other} for {}", c.name.as_str())));
                            return None;
                        }
                    };
                    Some((c.name.to_string(), op, c.value.as_ref().map(|v| v.to_string())))
                })
                .collect();
            Alteration { resource_type: r.resource_type, name: r.resource_name.to_string(), ops, refused }
        })
        .collect();
    let results = alter(agent, access, &resources, false, req.validate_only).await;
    IncrementalAlterConfigsResponse::default().with_responses(responses!(AlterConfigsResourceResponse, req.resources, results))
}

/// Both alter APIs: each resource's error code and message, in request order. `replace`: the
/// legacy AlterConfigs (a resource's configs become the request's). Topic changes go to the
/// controller in one call; broker ones are this agent's.
async fn alter(agent: &Agent, access: &Access<'_>, resources: &[Alteration], replace: bool, validate_only: bool) -> Vec<Refusal> {
    let mut results: Vec<Option<Refusal>> = Vec::with_capacity(resources.len());
    let mut sent: Vec<(usize, TopicConfigChange)> = Vec::new();
    let mut subscriptions: Vec<(usize, ClientMetricsChange)> = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        if i >= RESOURCES_PER_REQUEST_MAX {
            results.push(Some(invalid(format!("more than {RESOURCES_PER_REQUEST_MAX} resources in one request"))));
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        let duplicates = !r.ops.iter().all(|(n, ..)| seen.insert(n));
        let result = match r.resource_type {
            _ if r.refused.is_some() => r.refused.clone(),
            RESOURCE_TOPIC if !access.check(AclOperation::AlterConfigs, ResourceType::Topic, &r.name) => {
                Some((ResponseError::TopicAuthorizationFailed.code(), None))
            }
            RESOURCE_TOPIC if duplicates => Some(invalid("Error due to duplicate config keys".into())),
            RESOURCE_TOPIC => {
                let ops = r.ops.iter().map(|(name, op, value)| ConfigOp { name: name.clone(), op: *op, value: value.clone() }).collect();
                sent.push((i, TopicConfigChange { topic: r.name.clone(), replace, ops }));
                None
            }
            RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => {
                Some(alter_broker(agent, access, r, replace, validate_only).err().unwrap_or((0, None)))
            }
            RESOURCE_GROUP if duplicates => Some(invalid("Error due to duplicate config keys".into())),
            RESOURCE_GROUP => Some(alter_group(agent, access, r, replace, validate_only).await.err().unwrap_or((0, None))),
            RESOURCE_CLIENT_METRICS => match cluster_access(access, AclOperation::AlterConfigs) {
                Err(refused) => Some(refused),
                Ok(()) if duplicates => Some(invalid("Error due to duplicate config keys".into())),
                Ok(()) => {
                    let ops =
                        r.ops.iter().map(|(name, op, value)| ConfigOp { name: name.clone(), op: *op, value: value.clone() }).collect();
                    subscriptions.push((i, ClientMetricsChange { name: r.name.clone(), replace, ops }));
                    None
                }
            },
            t => Some(invalid(format!(
                "resource type {t} cannot be altered on sidestream (topics, brokers, broker loggers, groups and client metrics can)"
            ))),
        };
        results.push(result);
    }
    if !sent.is_empty() {
        let changes = sent.iter().map(|(_, c)| c.clone()).collect();
        let answered = agent.controller.alter_topic_configs(changes, validate_only).await;
        for (k, (i, change)) in sent.iter().enumerate() {
            results[*i] = Some(nth(&answered, k).map_or_else(|e| refusal(&e, &change.topic), |_| (0, None)));
        }
    }
    if !subscriptions.is_empty() {
        let changes = subscriptions.iter().map(|(_, c)| c.clone()).collect();
        let answered = agent.controller.alter_client_metrics(changes, validate_only).await;
        for (k, (i, change)) in subscriptions.iter().enumerate() {
            results[*i] = Some(nth(&answered, k).map_or_else(|e| refusal(&e, &change.name), |()| (0, None)));
        }
        if !validate_only && answered.is_ok() {
            // This agent's clients see the change at once; other agents' at their next refresh.
            crate::agent::client_telemetry::refresh_runtime_subscriptions(agent).await;
        }
    }
    results.into_iter().map(|r| r.unwrap_or((0, None))).collect()
}

/// The `k`th answer of a controller call that answers each change in order (the call's own
/// error for every change when it failed as a whole).
fn nth<T: Clone>(answered: &Result<Vec<Result<T, ControllerError>>, ControllerError>, k: usize) -> Result<T, ControllerError> {
    match answered {
        Ok(each) => each.get(k).cloned().unwrap_or(Err(ControllerError::OperationNotAttempted)),
        Err(e) => Err(e.clone()),
    }
}

/// The resource types ListConfigResources v1 serves (Kafka's order of `supportedResourceTypes`).
const LISTED_TYPES: [i8; 4] = [RESOURCE_TOPIC, RESOURCE_BROKER, RESOURCE_BROKER_LOGGER, RESOURCE_CLIENT_METRICS];

/// ListConfigResources (formerly ListClientMetricsResources): the names of the resources of the
/// types asked for (v0: client metrics subscriptions only).
pub async fn list_config_resources(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: ListConfigResourcesRequest,
) -> ListConfigResourcesResponse {
    let response = ListConfigResourcesResponse::default();
    if cluster_access(access, AclOperation::DescribeConfigs).is_err() {
        return response.with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let types: Vec<i8> = if version == 0 {
        vec![RESOURCE_CLIENT_METRICS]
    } else if req.resource_types.is_empty() {
        LISTED_TYPES.to_vec()
    } else {
        req.resource_types.clone()
    };
    if types.iter().any(|t| !LISTED_TYPES.contains(t)) {
        return response.with_error_code(ResponseError::UnsupportedVersion.code());
    }
    let mut out: Vec<ConfigResource> = Vec::new();
    let mut add = |ty: i8, name: String| {
        let r = ConfigResource::default().with_resource_name(str_bytes(name));
        out.push(if version >= 1 { r.with_resource_type(ty) } else { r });
    };
    for ty in LISTED_TYPES.iter().copied().filter(|t| types.contains(t)) {
        match ty {
            RESOURCE_TOPIC => agent.controller.topics().iter().for_each(|t| add(ty, t.name.clone())),
            RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => add(ty, agent.broker_configs.node_id().to_string()),
            _ => match agent.controller.all_client_metrics().await {
                Ok(all) => all.into_iter().for_each(|r| add(ty, r.name)),
                Err(e) => return response.with_error_code(controller_code(&e)),
            },
        }
    }
    response.with_error_code(0).with_config_resources(out)
}

impl super::quotas::Throttle for ListConfigResourcesResponse {
    fn with_throttle(&self, ms: i32) -> Option<Self> {
        Some(self.clone().with_throttle_time_ms(ms))
    }
}

/// A BROKER or BROKER_LOGGER resource: its name must be this broker's id (or "", the cluster
/// default, for BROKER), as Kafka's ConfigAdminManager checks.
fn alter_broker(agent: &Agent, access: &Access<'_>, r: &Alteration, replace: bool, validate_only: bool) -> Result<(), Refusal> {
    if !access.check(AclOperation::AlterConfigs, ResourceType::Cluster, crate::api::acl::CLUSTER_NAME) {
        return Err((ResponseError::ClusterAuthorizationFailed.code(), None));
    }
    let configs = &agent.broker_configs;
    if !r.name.is_empty() {
        let id: i32 = r.name.parse().map_err(|_| invalid(format!("Node id must be an integer, but it is: {}", r.name)))?;
        if id != configs.node_id() {
            return Err(invalid(format!("Unexpected broker id, expected {}, but received {}", configs.node_id(), r.name)));
        }
    }
    let done = if r.resource_type == RESOURCE_BROKER {
        configs.alter(&r.ops, replace, r.name.is_empty(), validate_only)
    } else if replace {
        return Err(invalid("AlterConfigs is deprecated and does not support the resource type BROKER_LOGGER".into()));
    } else {
        configs.alter_loggers(&r.ops, validate_only)
    };
    done.map_err(|e| refusal(&e, &r.name))
}

impl super::quotas::Throttle for AlterConfigsResponse {
    fn with_throttle(&self, ms: i32) -> Option<Self> {
        Some(self.clone().with_throttle_time_ms(ms))
    }
}

impl super::quotas::Throttle for IncrementalAlterConfigsResponse {
    fn with_throttle(&self, ms: i32) -> Option<Self> {
        Some(self.clone().with_throttle_time_ms(ms))
    }
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

    fn short(d: &Described) -> (String, String, Source, ConfigType) {
        (d.name.clone(), d.value.clone().unwrap_or_default(), d.source, d.ty)
    }

    #[test]
    fn defaults_unless_set_on_the_topic() {
        let got: Vec<_> = topic_configs(&topic(&[("retention.ms", "1000")]), 2000).iter().map(short).collect();
        let find = |k: &str| got.iter().find(|(n, ..)| n == k).cloned();
        assert_eq!(find("retention.ms"), Some(("retention.ms".into(), "1000".into(), Source::Topic, ConfigType::Long)));
        assert_eq!(find("cleanup.policy"), Some(("cleanup.policy".into(), "delete".into(), Source::Default, ConfigType::List)));
        assert_eq!(find("max.message.bytes").map(|c| c.1), Some("2000".into()));
        assert_eq!(got.len(), TOPIC_CONFIGS.iter().filter(|d| d.default.is_some()).count());
        assert!(find("message.downconversion.enable").is_none(), "a name Kafka 4 removed is not listed");
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
    }

    #[test]
    fn a_set_config_without_a_default_is_listed() {
        let got: Vec<_> =
            topic_configs(&topic(&[("segment.jitter.ms", "5"), ("message.timestamp.difference.max.ms", "9"), ("x.y", "*")]), 1)
                .iter()
                .map(short)
                .collect();
        assert_eq!(got.len(), TOPIC_CONFIGS.iter().filter(|d| d.default.is_some()).count() + 2);
        assert!(got.iter().any(|(n, v, s, _)| n == "x.y" && v == "*" && *s == Source::Topic));
        assert!(
            got.iter().any(|(n, v, s, t)| n == "message.timestamp.difference.max.ms"
                && v == "9"
                && *s == Source::Topic
                && *t == ConfigType::Long)
        );
    }
}
