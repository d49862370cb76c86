//! KIP-848 consumer groups: ConsumerGroupHeartbeat (join, reconcile towards the server-side
//! assignment, leave) and ConsumerGroupDescribe, translated to the controller's coordinator.
//!
//! ACLs (Kafka's): the heartbeat needs READ on the group and DESCRIBE on every subscribed topic
//! named (TOPIC_AUTHORIZATION_FAILED); a regex subscription's topics are not filtered by ACLs
//! here (a member may be assigned a topic it cannot read: its fetches are refused). Describe
//! needs DESCRIBE on the group, and hides a group assigned topics the client may not describe.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

use kafka_protocol::messages::consumer_group_describe_response::{self as describe, DescribedGroup, Member};
use kafka_protocol::messages::consumer_group_heartbeat_response::{self as heartbeat, Assignment};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, TopicName,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::groups::consumer::HeartbeatRequest;
use crate::api::groups::{ClientInfo, GroupError};
use crate::protocol::error::group_code;

/// ConsumerGroupDescribe v1 member type of members using this protocol.
const MEMBER_TYPE_CONSUMER: i8 = 1;

pub async fn heartbeat(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: ConsumerGroupHeartbeatRequest,
    client: &ClientInfo,
) -> ConsumerGroupHeartbeatResponse {
    if !access.check(AclOperation::Read, ResourceType::Group, &req.group_id.0) {
        return refusal(ResponseError::GroupAuthorizationFailed.code(), format!("READ on group {} is not allowed", req.group_id.0));
    }
    if let Some(message) = undescribable(access, req.subscribed_topic_names.as_deref()) {
        return refusal(ResponseError::TopicAuthorizationFailed.code(), message);
    }
    let owned = req.topic_partitions.map(|tps| {
        let mut a: BTreeMap<uuid::Uuid, std::collections::BTreeSet<i32>> = BTreeMap::new();
        for tp in tps {
            a.entry(tp.topic_id).or_default().extend(tp.partitions);
        }
        a
    });
    let r = HeartbeatRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req.subscribed_topic_names.map(|ns| ns.into_iter().map(|n| n.0.to_string()).collect()),
        // Empty: no regex (librdkafka sends it when it subscribes by names; a client that
        // moves from a regex to names clears it so).
        subscribed_topic_regex: if version >= 1 { req.subscribed_topic_regex.map(|s| s.to_string()) } else { None },
        server_assignor: req.server_assignor.map(|s| s.to_string()),
        owned,
        api_version: version,
        client: client.clone(),
    };
    let group_id = r.group_id.clone();
    let member_epoch = r.member_epoch;
    match agent.controller.consumer_group_heartbeat(r).await {
        Ok(resp) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(str_bytes(resp.member_id)))
            .with_member_epoch(resp.member_epoch)
            .with_heartbeat_interval_ms(resp.heartbeat_interval_ms)
            .with_assignment(resp.assignment.map(|a| {
                Assignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(t, ps)| heartbeat::TopicPartitions::default().with_topic_id(t).with_partitions(ps.into_iter().collect()))
                        .collect(),
                )
            })),
        Err(e) => {
            tracing::debug!(group = %group_id, member_epoch, error = %e, "ConsumerGroupHeartbeat refused");
            error_response(&e)
        }
    }
}

/// Subscribed topics must all be describable (a client is not told of topics it may not see):
/// the refusal's message naming those that are not, if any.
pub(super) fn undescribable(access: &Access<'_>, names: Option<&[TopicName]>) -> Option<String> {
    let hidden: Vec<&str> = names
        .into_iter()
        .flatten()
        .map(|n| &*n.0)
        .filter(|n| !access.check(AclOperation::Describe, ResourceType::Topic, n))
        .collect();
    (!hidden.is_empty()).then(|| format!("DESCRIBE on topics {} is not allowed", hidden.join(", ")))
}

fn error_response(e: &GroupError) -> ConsumerGroupHeartbeatResponse {
    refusal(group_code(e), e.to_string())
}

fn refusal(code: i16, message: String) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default().with_error_code(code).with_error_message(Some(str_bytes(message)))
}

pub async fn describe(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
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
        match agent.controller.consumer_group_describe(id.0.to_string()).await {
            Err(e) => {
                d = d.with_error_code(group_code(&e)).with_error_message(Some(str_bytes(format!("group {}: {e}", id.0))));
            }
            // Kafka: a group whose members hold topics the client may not describe is not shown.
            Ok(g)
                if g.members
                    .iter()
                    .flat_map(|m| m.assignment.iter().chain(&m.target_assignment))
                    .any(|(_, topic, _)| !access.allows(AclOperation::Describe, ResourceType::Topic, topic)) =>
            {
                d = d
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes("The group has described topic(s) that the client is not authorized to describe.")));
            }
            Ok(g) => {
                let tps = |a: Vec<(uuid::Uuid, String, Vec<i32>)>| {
                    describe::Assignment::default().with_topic_partitions(
                        a.into_iter()
                            .map(|(t, n, ps)| {
                                describe::TopicPartitions::default()
                                    .with_topic_id(t)
                                    .with_topic_name(TopicName(str_bytes(n)))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    )
                };
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut out = Member::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_instance_id(m.instance_id.map(str_bytes))
                            .with_rack_id(m.rack_id.map(str_bytes))
                            .with_member_epoch(m.member_epoch)
                            .with_client_id(str_bytes(m.client.client_id))
                            .with_client_host(str_bytes(m.client.client_host))
                            .with_subscribed_topic_names(m.subscribed_topic_names.into_iter().map(|n| TopicName(str_bytes(n))).collect())
                            .with_subscribed_topic_regex(m.subscribed_topic_regex.map(str_bytes))
                            .with_assignment(tps(m.assignment))
                            .with_target_assignment(tps(m.target_assignment));
                        if version >= 1 {
                            out = out.with_member_type(MEMBER_TYPE_CONSUMER);
                        }
                        out
                    })
                    .collect();
                d = d
                    .with_group_state(str_bytes(g.state))
                    .with_group_epoch(g.group_epoch)
                    .with_assignment_epoch(g.assignment_epoch)
                    .with_assignor_name(str_bytes(g.assignor_name))
                    .with_members(members);
            }
        }
        groups.push(d);
    }
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
