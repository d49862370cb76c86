//! Group coordination: FindCoordinator (sidecar mode: this agent coordinates every group and
//! transaction; cluster mode: a live agent chosen by hash of the key, in the client's zone),
//! the classic protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and group administration
//! (ListGroups, DescribeGroups, DeleteGroups), translated to and from the controller's group
//! coordinator. Fields are set only in the versions that have them: the encoder refuses
//! anything else.
//!
//! ACLs (Kafka's): FindCoordinator needs DESCRIBE on the group or transactional id; JoinGroup,
//! SyncGroup, Heartbeat and LeaveGroup READ on the group; DescribeGroups DESCRIBE, DeleteGroups
//! DELETE on each group (GROUP_AUTHORIZATION_FAILED); ListGroups lists every group with DESCRIBE
//! on the cluster, else the groups the client may describe.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::cluster::Brokers;
use crate::api::ListenerAddress;
use crate::api::acl::{AclOperation, CLUSTER_NAME, ResourceType};
use crate::api::groups::{ClientInfo, GroupError, JoinRequest, SyncRequest};
use crate::protocol::error::group_code;

/// FindCoordinator key types this agent coordinates: groups (0) and transactions (1).
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn key_type_ok(key_type: i8) -> bool {
    key_type == KEY_TYPE_GROUP || key_type == KEY_TYPE_TRANSACTION
}

/// DESCRIBE on the group or transactional id a FindCoordinator key names, else Kafka's error.
fn key_refused(access: &Access<'_>, key_type: i8, key: &str) -> Option<i16> {
    match key_type {
        KEY_TYPE_GROUP if !access.check(AclOperation::Describe, ResourceType::Group, key) => {
            Some(ResponseError::GroupAuthorizationFailed.code())
        }
        KEY_TYPE_TRANSACTION if !access.check(AclOperation::Describe, ResourceType::TransactionalId, key) => {
            Some(ResponseError::TransactionalIdAuthorizationFailed.code())
        }
        _ => None,
    }
}

/// READ on the group (Join, Sync, Heartbeat, Leave), else GROUP_AUTHORIZATION_FAILED's code.
fn read_refused(access: &Access<'_>, group_id: &str) -> Option<i16> {
    (!access.check(AclOperation::Read, ResourceType::Group, group_id)).then_some(ResponseError::GroupAuthorizationFailed.code())
}

pub fn find_coordinator(
    agent: &Agent,
    access: &Access<'_>,
    version: i16,
    req: FindCoordinatorRequest,
    client: &ClientInfo,
    listener: &ListenerAddress,
) -> FindCoordinatorResponse {
    let brokers = Brokers::for_client(agent, listener, &client.client_id);
    let key_type = if version >= 1 { req.key_type } else { KEY_TYPE_GROUP };
    // Kafka creates the coordinator's internal topic on the first FindCoordinator.
    if let Some(name) = crate::agent::internal_topics::for_coordinator(key_type) {
        agent.internal_topics.ensure(&agent.controller, name);
    }
    if version < 4 {
        let r = FindCoordinatorResponse::default();
        if !key_type_ok(key_type) {
            return r
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(if version >= 1 { Some(str_bytes(format!("unsupported key type {key_type}"))) } else { None })
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1);
        }
        if let Some(code) = key_refused(access, key_type, &req.key) {
            return r
                .with_error_code(code)
                .with_error_message(if version >= 1 { Some(str_bytes(format!("DESCRIBE on {} is not allowed", req.key))) } else { None })
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1);
        }
        let c = brokers.coordinator(&req.key);
        return r.with_error_message(None).with_node_id(BrokerId(c.node_id)).with_host(str_bytes(c.host.clone())).with_port(c.port);
    }
    let coordinators = req
        .coordinator_keys
        .into_iter()
        .map(|key| {
            let c = Coordinator::default().with_key(key);
            if let Some(code) = key_type_ok(key_type).then(|| key_refused(access, key_type, &c.key)).flatten() {
                let message = format!("DESCRIBE on {} is not allowed", c.key);
                c.with_node_id(BrokerId(-1)).with_port(-1).with_error_code(code).with_error_message(Some(str_bytes(message)))
            } else if key_type_ok(key_type) {
                let b = brokers.coordinator(&c.key);
                c.with_node_id(BrokerId(b.node_id)).with_host(str_bytes(b.host.clone())).with_port(b.port).with_error_message(None)
            } else {
                c.with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!("unsupported key type {key_type}"))))
            }
        })
        .collect();
    FindCoordinatorResponse::default().with_error_message(None).with_coordinators(coordinators)
}

fn code(e: &Option<GroupError>) -> i16 {
    e.as_ref().map(group_code).unwrap_or(0)
}

pub async fn join_group(agent: &Agent, access: &Access<'_>, version: i16, req: JoinGroupRequest, client: &ClientInfo) -> JoinGroupResponse {
    if let Some(code) = read_refused(access, &req.group_id.0) {
        return JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_protocol_name(if version >= 7 { None } else { Some(str_bytes("")) })
            .with_leader(str_bytes(""))
            .with_member_id(str_bytes(""));
    }
    let r = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 { req.rebalance_timeout_ms } else { -1 },
        protocol_type: req.protocol_type.to_string(),
        protocols: req.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        require_known_member_id: version >= 4,
        client: client.clone(),
    };
    let resp = agent.controller.join_group(r).await;
    let members = resp
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                .with_group_instance_id(if version >= 5 { m.group_instance_id.map(str_bytes) } else { None })
                .with_metadata(m.metadata)
        })
        .collect();
    let protocol_name = resp.protocol_name.map(str_bytes);
    JoinGroupResponse::default()
        .with_error_code(code(&resp.error))
        .with_generation_id(resp.generation_id)
        .with_protocol_type(if version >= 7 { resp.protocol_type.map(str_bytes) } else { None })
        // Nullable only from v7.
        .with_protocol_name(if version >= 7 { protocol_name } else { Some(protocol_name.unwrap_or_default()) })
        .with_leader(str_bytes(resp.leader))
        .with_skip_assignment(version >= 9 && resp.skip_assignment)
        .with_member_id(str_bytes(resp.member_id))
        .with_members(members)
}

pub async fn sync_group(agent: &Agent, access: &Access<'_>, version: i16, req: SyncGroupRequest) -> SyncGroupResponse {
    if let Some(code) = read_refused(access, &req.group_id.0) {
        return SyncGroupResponse::default().with_error_code(code);
    }
    let r = SyncRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        protocol_type: req.protocol_type.map(|s| s.to_string()),
        protocol_name: req.protocol_name.map(|s| s.to_string()),
        assignments: req.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect(),
    };
    match agent.controller.sync_group(r).await {
        Ok(s) => {
            let mut out = SyncGroupResponse::default().with_assignment(s.assignment);
            if version >= 5 {
                out = out.with_protocol_type(s.protocol_type.map(str_bytes)).with_protocol_name(s.protocol_name.map(str_bytes));
            }
            out
        }
        Err(e) => SyncGroupResponse::default().with_error_code(group_code(&e)),
    }
}

pub async fn heartbeat(agent: &Agent, access: &Access<'_>, req: HeartbeatRequest) -> HeartbeatResponse {
    if let Some(code) = read_refused(access, &req.group_id.0) {
        return HeartbeatResponse::default().with_error_code(code);
    }
    let r = agent
        .controller
        .heartbeat(req.group_id.0.to_string(), req.member_id.to_string(), req.group_instance_id.map(|s| s.to_string()), req.generation_id)
        .await;
    HeartbeatResponse::default().with_error_code(r.err().as_ref().map(group_code).unwrap_or(0))
}

pub async fn leave_group(agent: &Agent, access: &Access<'_>, version: i16, req: LeaveGroupRequest) -> LeaveGroupResponse {
    if let Some(code) = read_refused(access, &req.group_id.0) {
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string())))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match agent.controller.leave_group(req.group_id.0.to_string(), members.clone()).await {
        Err(e) => LeaveGroupResponse::default().with_error_code(group_code(&e)),
        Ok(results) if version < 3 => {
            LeaveGroupResponse::default().with_error_code(results.first().and_then(|r| r.as_ref().err()).map(group_code).unwrap_or(0))
        }
        Ok(results) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(results)
                .map(|((m, i), r)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(m))
                        .with_group_instance_id(i.map(str_bytes))
                        .with_error_code(r.err().as_ref().map(group_code).unwrap_or(0))
                })
                .collect(),
        ),
    }
}

pub async fn list_groups(agent: &Agent, access: &Access<'_>, version: i16, req: ListGroupsRequest) -> ListGroupsResponse {
    // DESCRIBE on the cluster lists every group; else the groups the client may describe.
    let all = access.allows(AclOperation::Describe, ResourceType::Cluster, CLUSTER_NAME);
    let states = if version >= 4 { req.states_filter.iter().map(|s| s.to_string()).collect() } else { Vec::new() };
    let types = if version >= 5 { req.types_filter.iter().map(|s| s.to_string()).collect() } else { Vec::new() };
    let listed = match agent.controller.list_groups(states, types).await {
        Ok(listed) => listed,
        Err(e) => return ListGroupsResponse::default().with_error_code(group_code(&e)),
    };
    let groups = listed
        .into_iter()
        .filter(|g| all || access.allows(AclOperation::Describe, ResourceType::Group, &g.group_id))
        .map(|g| {
            let mut l = ListedGroup::default().with_group_id(GroupId(str_bytes(g.group_id))).with_protocol_type(str_bytes(g.protocol_type));
            if version >= 4 {
                l = l.with_group_state(str_bytes(g.state));
            }
            if version >= 5 {
                l = l.with_group_type(str_bytes(g.group_type));
            }
            l
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn describe_groups(agent: &Agent, access: &Access<'_>, version: i16, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut out = Vec::with_capacity(req.groups.len());
    for id in req.groups {
        let mut d = DescribedGroup::default().with_group_id(id.clone());
        if !access.check(AclOperation::Describe, ResourceType::Group, &id.0) {
            d = d.with_error_code(ResponseError::GroupAuthorizationFailed.code());
            if version >= 6 {
                d = d.with_error_message(Some(str_bytes(format!("DESCRIBE on group {} is not allowed", id.0))));
            }
            out.push(d);
            continue;
        }
        if version >= 3 && req.include_authorized_operations {
            d = d.with_authorized_operations(access.authorized_operations(ResourceType::Group, &id.0));
        }
        match agent.controller.describe_group(id.0.to_string()).await {
            Ok(g) => {
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_group_instance_id(if version >= 4 { m.group_instance_id.map(str_bytes) } else { None })
                            .with_client_id(str_bytes(m.client_id))
                            .with_client_host(str_bytes(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
                d = d
                    .with_group_state(str_bytes(g.state))
                    .with_protocol_type(str_bytes(g.protocol_type))
                    .with_protocol_data(str_bytes(g.protocol_data))
                    .with_members(members);
            }
            // Before v6 an unknown group is described as Dead without an error (as in Kafka).
            Err(GroupError::GroupIdNotFound) if version < 6 => d = d.with_group_state(str_bytes("Dead")),
            Err(e) => {
                d = d.with_error_code(group_code(&e)).with_group_state(str_bytes("Dead"));
                if version >= 6 {
                    d = d.with_error_message(Some(str_bytes(format!("group {}: {e}", id.0))));
                }
            }
        }
        out.push(d);
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn delete_groups(agent: &Agent, access: &Access<'_>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in req.groups_names {
        if !access.check(AclOperation::Delete, ResourceType::Group, &id.0) {
            results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(ResponseError::GroupAuthorizationFailed.code()));
            continue;
        }
        let r = agent.controller.delete_group(id.0.to_string()).await;
        results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(r.err().as_ref().map(group_code).unwrap_or(0)));
    }
    DeleteGroupsResponse::default().with_results(results)
}
