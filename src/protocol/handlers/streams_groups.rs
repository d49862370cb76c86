//! KIP-1071 streams groups: StreamsGroupHeartbeat (join with a topology, reconcile towards the
//! server-side task assignment, leave) and StreamsGroupDescribe, translated to the controller's
//! coordinator.
//!
//! Internal topics: when the coordinator finds a topology's repartition or changelog topics
//! missing, its answer lists them and this handler creates them (with the partition count and
//! configs the coordinator derived), as Kafka's broker does; the member is told
//! MISSING_INTERNAL_TOPICS until a later heartbeat finds them.
//!
//! ACLs (Kafka's): the heartbeat needs READ on the group and DESCRIBE on every topic the
//! topology names (TOPIC_AUTHORIZATION_FAILED); creating internal topics needs CREATE on the
//! cluster or the topic (else they are left missing and the status detail says why). Describe
//! needs DESCRIBE on the group.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::streams_group_describe_response::{self as describe, DescribedGroup, Member};
use kafka_protocol::messages::streams_group_heartbeat_request::{self as hb_req, Topology};
use kafka_protocol::messages::streams_group_heartbeat_response::{self as hb_resp};
use kafka_protocol::messages::{
    StreamsGroupDescribeRequest, StreamsGroupDescribeResponse, StreamsGroupHeartbeatRequest, StreamsGroupHeartbeatResponse, TopicName,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::api::ControllerError;
use crate::api::CreateTopic;
use crate::api::acl::{AclOperation, CLUSTER_NAME, ResourceType};
use crate::api::groups::streams::{self, HeartbeatRequest, STATUS_MISSING_INTERNAL_TOPICS, Tasks, TopicInfo};
use crate::api::groups::{ClientInfo, GroupError};
use crate::protocol::error::group_code;

/// Kafka's `group.streams.task.offset.interval.ms` default: how often members report their
/// changelog offsets (for warm-up tasks, which this coordinator never assigns).
const TASK_OFFSET_INTERVAL_MS: i32 = 60_000;
/// Kafka's `acceptable.recovery.lag` default, told to members.
const ACCEPTABLE_RECOVERY_LAG: i64 = 10_000;

fn tasks_in(t: Option<Vec<hb_req::TaskIds>>) -> Option<Tasks> {
    t.map(|ts| {
        let mut out = Tasks::new();
        for t in ts {
            out.entry(t.subtopology_id.to_string()).or_default().extend(t.partitions);
        }
        out
    })
}

fn tasks_out(t: Option<Tasks>) -> Option<Vec<hb_resp::TaskIds>> {
    t.map(|ts| {
        ts.into_iter()
            .map(|(s, ps)| hb_resp::TaskIds::default().with_subtopology_id(str_bytes(s)).with_partitions(ps.into_iter().collect()))
            .collect()
    })
}

fn topic_info(i: hb_req::TopicInfo) -> TopicInfo {
    TopicInfo {
        name: i.name.0.to_string(),
        partitions: i.partitions,
        replication_factor: i.replication_factor,
        configs: i.topic_configs.into_iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect(),
    }
}

fn topology(t: Topology) -> streams::Topology {
    let names = |ns: Vec<TopicName>| ns.into_iter().map(|n| n.0.to_string()).collect();
    streams::Topology {
        epoch: t.epoch,
        subtopologies: t
            .subtopologies
            .into_iter()
            .map(|s| streams::Subtopology {
                id: s.subtopology_id.to_string(),
                source_topics: names(s.source_topics),
                source_topic_regex: s.source_topic_regex.into_iter().map(|r| r.to_string()).collect(),
                changelog_topics: s.state_changelog_topics.into_iter().map(topic_info).collect(),
                repartition_sink_topics: names(s.repartition_sink_topics),
                repartition_source_topics: s.repartition_source_topics.into_iter().map(topic_info).collect(),
                copartition_groups: s
                    .copartition_groups
                    .into_iter()
                    .map(|g| streams::CopartitionGroup {
                        source_topics: g.source_topics,
                        source_topic_regex: g.source_topic_regex,
                        repartition_source_topics: g.repartition_source_topics,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Every topic a topology names (its regular expressions aside).
fn topology_topics(t: &streams::Topology) -> BTreeSet<&str> {
    t.subtopologies
        .iter()
        .flat_map(|s| {
            let infos = s.changelog_topics.iter().chain(&s.repartition_source_topics).map(|i| i.name.as_str());
            s.source_topics.iter().chain(&s.repartition_sink_topics).map(String::as_str).chain(infos)
        })
        .collect()
}

pub async fn heartbeat(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: StreamsGroupHeartbeatRequest,
    client: &ClientInfo,
) -> StreamsGroupHeartbeatResponse {
    if !access.check(AclOperation::Read, ResourceType::Group, &req.group_id.0) {
        return refusal(ResponseError::GroupAuthorizationFailed.code(), format!("READ on group {} is not allowed", req.group_id.0));
    }
    let topology = req.topology.map(topology);
    if let Some(t) = &topology {
        let hidden: Vec<&str> =
            topology_topics(t).into_iter().filter(|n| !access.check(AclOperation::Describe, ResourceType::Topic, n)).collect();
        if !hidden.is_empty() {
            return refusal(
                ResponseError::TopicAuthorizationFailed.code(),
                format!("DESCRIBE on topics {} is not allowed", hidden.join(", ")),
            );
        }
    }
    let r = HeartbeatRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        topology,
        active: tasks_in(req.active_tasks),
        standby: tasks_in(req.standby_tasks),
        warmup: tasks_in(req.warmup_tasks),
        process_id: req.process_id.map(|s| s.to_string()),
        user_endpoint: req.user_endpoint.map(|e| (e.host.to_string(), e.port)),
        client_tags: req.client_tags.map(|kvs| kvs.into_iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()),
        shutdown_application: req.shutdown_application,
        api_version: version,
        client: client.clone(),
    };
    let group_id = r.group_id.clone();
    let member_epoch = r.member_epoch;
    let resp = match agent.controller.streams_group_heartbeat(r).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(group = %group_id, member_epoch, error = %e, "StreamsGroupHeartbeat refused");
            return error_response(&e);
        }
    };
    let mut status = resp.status;
    let failures = create_internal_topics(agent, access, &resp.create_topics).await;
    if !failures.is_empty()
        && let Some(s) = status.iter_mut().find(|s| s.code == STATUS_MISSING_INTERNAL_TOPICS)
    {
        s.detail = format!("{} Creating them failed: {}", s.detail, failures.join("; "));
    }
    StreamsGroupHeartbeatResponse::default()
        .with_member_id(str_bytes(resp.member_id))
        .with_member_epoch(resp.member_epoch)
        .with_heartbeat_interval_ms(resp.heartbeat_interval_ms)
        .with_task_offset_interval_ms(TASK_OFFSET_INTERVAL_MS)
        .with_acceptable_recovery_lag_legacy(if version == 0 { ACCEPTABLE_RECOVERY_LAG as i32 } else { 0 })
        .with_acceptable_recovery_lag(ACCEPTABLE_RECOVERY_LAG)
        .with_status(Some(
            status
                .into_iter()
                .map(|s| hb_resp::Status::default().with_status_code(s.code).with_status_detail(str_bytes(s.detail)))
                .collect(),
        ))
        .with_active_tasks(tasks_out(resp.active))
        .with_standby_tasks(tasks_out(resp.standby))
        .with_warmup_tasks(tasks_out(resp.warmup))
}

/// Creates the internal topics a heartbeat found missing; returns why some could not be.
async fn create_internal_topics(agent: &Agent, access: &Access<'_>, topics: &[streams::TopicToCreate]) -> Vec<String> {
    let cluster_create = access.allows(AclOperation::Create, ResourceType::Cluster, CLUSTER_NAME);
    let mut failures = Vec::new();
    for t in topics {
        if !cluster_create && !access.check(AclOperation::Create, ResourceType::Topic, &t.name) {
            failures.push(format!("{}: CREATE is not allowed", t.name));
            continue;
        }
        let req = CreateTopic {
            name: t.name.clone(),
            partitions: t.partitions,
            replication_factor: -1,
            configs: t.configs.iter().cloned().collect::<BTreeMap<_, _>>(),
            validate_only: false,
        };
        match agent.controller.create_topic(req).await {
            Ok(_) | Err(ControllerError::TopicAlreadyExists(_)) => {
                tracing::info!(topic = %t.name, partitions = t.partitions, "created a streams group's internal topic");
            }
            Err(e) => {
                tracing::warn!(topic = %t.name, error = %e, "creating a streams group's internal topic failed");
                failures.push(format!("{}: {e}", t.name));
            }
        }
    }
    failures
}

fn error_response(e: &GroupError) -> StreamsGroupHeartbeatResponse {
    refusal(group_code(e), e.to_string())
}

fn refusal(code: i16, message: String) -> StreamsGroupHeartbeatResponse {
    StreamsGroupHeartbeatResponse::default().with_error_code(code).with_error_message(Some(str_bytes(message)))
}

fn describe_tasks(t: Tasks) -> Vec<describe::TaskIds> {
    t.into_iter()
        .map(|(s, ps)| describe::TaskIds::default().with_subtopology_id(str_bytes(s)).with_partitions(ps.into_iter().collect()))
        .collect()
}

fn describe_assignment((active, standby, warmup): (Tasks, Tasks, Tasks)) -> describe::Assignment {
    describe::Assignment::default()
        .with_active_tasks(describe_tasks(active))
        .with_standby_tasks(describe_tasks(standby))
        .with_warmup_tasks(describe_tasks(warmup))
}

fn describe_topic_info(i: TopicInfo) -> describe::TopicInfo {
    describe::TopicInfo::default()
        .with_name(TopicName(str_bytes(i.name)))
        .with_partitions(i.partitions)
        .with_replication_factor(i.replication_factor)
        .with_topic_configs(
            i.configs
                .into_iter()
                .map(|(k, v)| describe::KeyValue::default().with_key(str_bytes(k)).with_value(str_bytes(v)))
                .collect(),
        )
}

fn describe_topology(t: streams::Topology) -> describe::Topology {
    let names = |ns: Vec<String>| ns.into_iter().map(|n| TopicName(str_bytes(n))).collect();
    describe::Topology::default().with_epoch(t.epoch).with_subtopologies(Some(
        t.subtopologies
            .into_iter()
            .map(|s| {
                describe::Subtopology::default()
                    .with_subtopology_id(str_bytes(s.id))
                    .with_source_topics(names(s.source_topics))
                    .with_repartition_sink_topics(names(s.repartition_sink_topics))
                    .with_state_changelog_topics(s.changelog_topics.into_iter().map(describe_topic_info).collect())
                    .with_repartition_source_topics(s.repartition_source_topics.into_iter().map(describe_topic_info).collect())
            })
            .collect(),
    ))
}

pub async fn describe(agent: &Agent, access: &Access<'_>, version: i16, req: StreamsGroupDescribeRequest) -> StreamsGroupDescribeResponse {
    let mut groups = Vec::with_capacity(req.group_ids.len());
    for id in req.group_ids {
        let mut d = DescribedGroup::default().with_group_id(id.clone());
        if !access.check(AclOperation::Describe, ResourceType::Group, &id.0) {
            groups.push(d.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
            continue;
        }
        if req.include_authorized_operations {
            d = d.with_authorized_operations(access.authorized_operations(ResourceType::Group, &id.0));
        }
        match agent.controller.streams_group_describe(id.0.to_string()).await {
            Err(e) => {
                d = d.with_error_code(group_code(&e)).with_error_message(Some(str_bytes(format!("group {}: {e}", id.0))));
            }
            Ok(g) => {
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        Member::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_member_epoch(m.member_epoch)
                            .with_instance_id(m.instance_id.map(str_bytes))
                            .with_rack_id(m.rack_id.map(str_bytes))
                            .with_client_id(str_bytes(m.client.client_id))
                            .with_client_host(str_bytes(m.client.client_host))
                            .with_topology_epoch(m.topology_epoch)
                            .with_process_id(str_bytes(m.process_id))
                            .with_user_endpoint(
                                m.user_endpoint.map(|(h, p)| describe::Endpoint::default().with_host(str_bytes(h)).with_port(p)),
                            )
                            .with_client_tags(
                                m.client_tags
                                    .into_iter()
                                    .map(|(k, v)| describe::KeyValue::default().with_key(str_bytes(k)).with_value(str_bytes(v)))
                                    .collect(),
                            )
                            .with_assignment(describe_assignment(m.assignment))
                            .with_target_assignment(describe_assignment(m.target_assignment))
                    })
                    .collect();
                d = d
                    .with_group_state(str_bytes(g.state))
                    .with_group_epoch(g.group_epoch)
                    .with_assignment_epoch(g.assignment_epoch)
                    .with_topology(g.topology.map(describe_topology))
                    .with_members(members);
                if version >= 1 {
                    d = d.with_assignor_name(Some(str_bytes("sticky")));
                }
            }
        }
        groups.push(d);
    }
    StreamsGroupDescribeResponse::default().with_groups(groups)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::streams_group_describe_response as d;
    use kafka_protocol::messages::streams_group_heartbeat_request as q;
    use kafka_protocol::messages::streams_group_heartbeat_response as r;
    use kafka_protocol::messages::{GroupId, StreamsGroupDescribeRequest};
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;

    fn round_trip<T: Encodable + Decodable + PartialEq + std::fmt::Debug>(m: &T, version: i16) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).unwrap();
        assert_eq!(buf.len(), m.compute_size(version).unwrap());
        let back = T::decode(&mut buf.freeze(), version).unwrap();
        assert_eq!(&back, m, "version {version}");
    }

    fn kv(k: &str, v: &str) -> q::KeyValue {
        q::KeyValue::default().with_key(str_bytes(k)).with_value(str_bytes(v))
    }

    fn request() -> StreamsGroupHeartbeatRequest {
        let info = |n: &str| {
            q::TopicInfo::default()
                .with_name(TopicName(str_bytes(n)))
                .with_topic_configs(vec![kv("cleanup.policy", "compact")])
        };
        let sub = q::Subtopology::default()
            .with_subtopology_id(str_bytes("1"))
            .with_source_topics(vec![TopicName(str_bytes("in"))])
            .with_source_topic_regex(vec![str_bytes("in-.*")])
            .with_state_changelog_topics(vec![info("app-chg")])
            .with_repartition_sink_topics(vec![TopicName(str_bytes("app-rep-2"))])
            .with_repartition_source_topics(vec![info("app-rep").with_partitions(4).with_replication_factor(3)])
            .with_copartition_groups(vec![
                q::CopartitionGroup::default().with_source_topics(vec![0]).with_repartition_source_topics(vec![0]),
            ]);
        let tasks = vec![q::TaskIds::default().with_subtopology_id(str_bytes("0")).with_partitions(vec![0, 2])];
        StreamsGroupHeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes("app")))
            .with_member_id(str_bytes("m1"))
            .with_member_epoch(3)
            .with_endpoint_information_epoch(2)
            .with_instance_id(Some(str_bytes("i1")))
            .with_rebalance_timeout_ms(30_000)
            .with_topology(Some(q::Topology::default().with_epoch(1).with_subtopologies(vec![sub])))
            .with_active_tasks(Some(tasks.clone()))
            .with_standby_tasks(Some(Vec::new()))
            .with_process_id(Some(str_bytes("p1")))
            .with_user_endpoint(Some(q::Endpoint::default().with_host(str_bytes("h")).with_port(65_000)))
            .with_client_tags(Some(vec![kv("zone", "a")]))
            .with_task_offsets(Some(vec![q::TaskOffset::default().with_subtopology_id(str_bytes("0")).with_partition(1).with_offset(9)]))
            .with_shutdown_application(true)
    }

    #[test]
    fn messages_round_trip_in_every_version() {
        for version in 0..=1 {
            round_trip(&request(), version);
            let resp = StreamsGroupHeartbeatResponse::default()
                .with_error_message(Some(str_bytes("x")))
                .with_member_id(str_bytes("m1"))
                .with_member_epoch(4)
                .with_heartbeat_interval_ms(5_000)
                .with_acceptable_recovery_lag_legacy(if version == 0 { 10_000 } else { 0 })
                .with_acceptable_recovery_lag(if version >= 1 { 10_000 } else { -1 })
                .with_task_offset_interval_ms(60_000)
                .with_status(Some(vec![r::Status::default().with_status_code(3).with_status_detail(str_bytes("missing"))]))
                .with_active_tasks(Some(vec![r::TaskIds::default().with_subtopology_id(str_bytes("0")).with_partitions(vec![1])]))
                .with_topology_description_required(version >= 1)
                .with_partitions_by_user_endpoint(Some(vec![r::EndpointToPartitions::default().with_active_partitions(vec![
                    r::TopicPartition::default().with_topic(TopicName(str_bytes("in"))).with_partitions(vec![0]),
                ])]));
            round_trip(&resp, version);
            let describe = StreamsGroupDescribeRequest::default()
                .with_group_ids(vec![GroupId(str_bytes("app"))])
                .with_include_authorized_operations(true)
                .with_include_topology_description(version >= 1);
            round_trip(&describe, version);
            let member = d::Member::default()
                .with_member_id(str_bytes("m1"))
                .with_process_id(str_bytes("p1"))
                .with_user_endpoint(Some(d::Endpoint::default().with_host(str_bytes("h")).with_port(1)))
                .with_assignment(describe_assignment(([("0".to_string(), [1].into())].into(), Tasks::new(), Tasks::new())));
            let group = DescribedGroup::default()
                .with_group_id(GroupId(str_bytes("app")))
                .with_group_state(str_bytes("Stable"))
                .with_topology(Some(describe_topology(topology(request().topology.unwrap()))))
                .with_members(vec![member])
                .with_assignor_name(if version >= 1 { Some(str_bytes("sticky")) } else { None });
            round_trip(&StreamsGroupDescribeResponse::default().with_groups(vec![group]), version);
        }
        // A field of a later version is refused, not silently dropped.
        let resp = StreamsGroupHeartbeatResponse::default().with_topology_description_required(true);
        assert!(resp.encode(&mut BytesMut::new(), 0).is_err());
    }

    #[test]
    fn the_topology_is_translated_field_by_field() {
        let t = topology(request().topology.unwrap());
        assert_eq!(t.epoch, 1);
        let s = &t.subtopologies[0];
        assert_eq!(
            (s.id.as_str(), s.source_topics.clone(), s.source_topic_regex.clone()),
            ("1", vec!["in".to_string()], vec!["in-.*".to_string()])
        );
        assert_eq!(
            s.repartition_source_topics[0],
            TopicInfo {
                name: "app-rep".into(),
                partitions: 4,
                replication_factor: 3,
                configs: vec![("cleanup.policy".into(), "compact".into())]
            }
        );
        assert_eq!(s.changelog_topics[0].name, "app-chg");
        assert_eq!(s.repartition_sink_topics, ["app-rep-2"]);
        assert_eq!(
            (s.copartition_groups[0].source_topics.clone(), s.copartition_groups[0].repartition_source_topics.clone()),
            (vec![0], vec![0])
        );
        assert_eq!(topology_topics(&t).into_iter().collect::<Vec<_>>(), ["app-chg", "app-rep", "app-rep-2", "in"]);
        assert_eq!(tasks_in(request().active_tasks), Some([("0".to_string(), [0, 2].into())].into()));
    }
}
