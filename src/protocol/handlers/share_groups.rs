//! Share groups (KIP-932): ShareGroupHeartbeat, ShareGroupDescribe, ShareFetch,
//! ShareAcknowledge, and the share-group offset admin APIs (DescribeShareGroupOffsets,
//! AlterShareGroupOffsets, DeleteShareGroupOffsets), translated to the controller's
//! coordinator (`controller::groups::shares`).
//!
//! ShareFetch: the agent steps the member's share session ([`crate::agent::share_session`]),
//! sends the acknowledgements and asks the controller to acquire records of the session's
//! partitions (one call, durable before answered), then reads the batches holding the
//! acquired offsets through the read cache, as Fetch does. Records it acquired but could not
//! fit in the answer are given back without counting the delivery. With nothing to acquire it
//! long-polls on commits, as Fetch, up to `MaxWaitMs` (capped by `[agent]
//! fetch_max_wait_ms_max`).
//!
//! ACLs (Kafka's): the heartbeat, ShareFetch and ShareAcknowledge need READ on the group, and
//! READ on each topic fetched (TOPIC_AUTHORIZATION_FAILED on its partitions); the heartbeat
//! DESCRIBE on every subscribed topic; describing needs DESCRIBE on the group; altering and
//! deleting offsets READ on the group and on each topic, as Kafka's.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_share_group_offsets_response::{
    AlterShareGroupOffsetsResponsePartition, AlterShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic;
use kafka_protocol::messages::describe_share_group_offsets_response::{
    DescribeShareGroupOffsetsResponseGroup, DescribeShareGroupOffsetsResponsePartition, DescribeShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::share_fetch_response::{AcquiredRecords, LeaderIdAndEpoch, PartitionData, ShareFetchableTopicResponse};
use kafka_protocol::messages::share_group_describe_response::{self as describe, DescribedGroup, Member};
use kafka_protocol::messages::share_group_heartbeat_response::{self as heartbeat, Assignment};
use kafka_protocol::messages::{
    AlterShareGroupOffsetsRequest, AlterShareGroupOffsetsResponse, DeleteShareGroupOffsetsRequest, DeleteShareGroupOffsetsResponse,
    DescribeShareGroupOffsetsRequest, DescribeShareGroupOffsetsResponse, ShareAcknowledgeRequest, ShareAcknowledgeResponse,
    ShareFetchRequest, ShareFetchResponse, ShareGroupDescribeRequest, ShareGroupDescribeResponse, ShareGroupHeartbeatRequest,
    ShareGroupHeartbeatResponse, TopicName, share_acknowledge_response,
};
use tokio::time::{Duration, Instant};
use uuid::Uuid;

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::agent::fetch::LEADER_EPOCH;
use crate::agent::share_session::{FINAL_EPOCH, SessionError};
use crate::api::TopicRef;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::groups::ClientInfo;
use crate::api::share::{AckBatch, Acquired, HeartbeatRequest, PartitionAnswer, PartitionRequest, RecordsRequest};
use crate::protocol::error::{agent_code, group_code};

/// Records one ShareFetch acquires when the client asks for fewer than one or more than this.
const SHARE_FETCH_RECORDS_MAX: u32 = 10_000;
/// Bytes one ShareFetch answer holds at most, whatever the client asks.
const SHARE_FETCH_BYTES_MAX: u64 = 64 << 20;

fn message(s: impl Into<String>) -> Option<kafka_protocol::protocol::StrBytes> {
    Some(str_bytes(s))
}

pub async fn heartbeat(
    agent: &Agent,
    access: &Access<'_>,
    req: ShareGroupHeartbeatRequest,
    client: &ClientInfo,
) -> ShareGroupHeartbeatResponse {
    let refusal = |code: i16, why: String| ShareGroupHeartbeatResponse::default().with_error_code(code).with_error_message(message(why));
    if !access.check(AclOperation::Read, ResourceType::Group, &req.group_id.0) {
        return refusal(ResponseError::GroupAuthorizationFailed.code(), format!("READ on group {} is not allowed", req.group_id.0));
    }
    if let Some(message) = super::consumer_groups::undescribable(access, req.subscribed_topic_names.as_deref()) {
        return refusal(ResponseError::TopicAuthorizationFailed.code(), message);
    }
    let r = HeartbeatRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        rack_id: req.rack_id.map(|s| s.to_string()),
        subscribed_topic_names: req.subscribed_topic_names.map(|ns| ns.into_iter().map(|n| n.0.to_string()).collect()),
        client: client.clone(),
    };
    let (group_id, member_epoch) = (r.group_id.clone(), r.member_epoch);
    match agent.controller.share_group_heartbeat(r).await {
        Ok(resp) => ShareGroupHeartbeatResponse::default()
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
            tracing::debug!(group = %group_id, member_epoch, error = %e, "ShareGroupHeartbeat refused");
            refusal(group_code(&e), e.to_string())
        }
    }
}

pub async fn describe(agent: &Agent, access: &Access<'_>, req: ShareGroupDescribeRequest) -> ShareGroupDescribeResponse {
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
        match agent.controller.share_group_describe(id.0.to_string()).await {
            Err(e) => d = d.with_error_code(group_code(&e)).with_error_message(message(format!("group {}: {e}", id.0))),
            Ok(g)
                if g.members
                    .iter()
                    .flat_map(|m| &m.assignment)
                    .any(|(_, topic, _)| !access.allows(AclOperation::Describe, ResourceType::Topic, topic)) =>
            {
                d = d
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(message("The group has described topic(s) that the client is not authorized to describe."));
            }
            Ok(g) => {
                let members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let assignment = describe::Assignment::default().with_topic_partitions(
                            m.assignment
                                .into_iter()
                                .map(|(t, n, ps)| {
                                    describe::TopicPartitions::default()
                                        .with_topic_id(t)
                                        .with_topic_name(TopicName(str_bytes(n)))
                                        .with_partitions(ps)
                                })
                                .collect(),
                        );
                        Member::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_rack_id(m.rack_id.map(str_bytes))
                            .with_member_epoch(m.member_epoch)
                            .with_client_id(str_bytes(m.client.client_id))
                            .with_client_host(str_bytes(m.client.client_host))
                            .with_subscribed_topic_names(m.subscribed_topic_names.into_iter().map(|n| TopicName(str_bytes(n))).collect())
                            .with_assignment(assignment)
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
    ShareGroupDescribeResponse::default().with_groups(groups)
}

fn session_code(e: &SessionError) -> (i16, &'static str) {
    match e {
        SessionError::NotFound => (ResponseError::ShareSessionNotFound.code(), "the share session was not found"),
        SessionError::InvalidEpoch => (ResponseError::InvalidShareSessionEpoch.code(), "the share session epoch is invalid"),
        SessionError::TooManyPartitions => (ResponseError::InvalidRequest.code(), "too many partitions in one share session"),
    }
}

/// One partition of a ShareFetch answer, as it is built.
#[derive(Default)]
struct Answer {
    error: i16,
    error_message: Option<String>,
    ack_error: i16,
    ack_message: Option<String>,
    records: Option<Bytes>,
    acquired: Vec<Acquired>,
    /// Whether the request acknowledged records of it, so it is answered even if empty.
    acknowledged: bool,
}

fn ack_batches<'a>(batches: impl Iterator<Item = (i64, i64, &'a Vec<i8>)>) -> Vec<AckBatch> {
    batches
        .map(|(first, last, types)| AckBatch { first_offset: first, last_offset: last, types: types.clone() })
        .collect()
}

pub async fn share_fetch(agent: &Agent, access: &Access<'_>, req: ShareFetchRequest) -> ShareFetchResponse {
    let refusal = |code: i16, why: &str| ShareFetchResponse::default().with_error_code(code).with_error_message(message(why));
    let (Some(group_id), Some(member_id)) = (req.group_id.as_ref(), req.member_id.as_ref()) else {
        return refusal(ResponseError::InvalidRequest.code(), "GroupId and MemberId are required");
    };
    let (group_id, member_id) = (group_id.0.to_string(), member_id.to_string());
    if !access.check(AclOperation::Read, ResourceType::Group, &group_id) {
        return refusal(ResponseError::GroupAuthorizationFailed.code(), "READ on the group is not allowed");
    }
    let named: Vec<(Uuid, i32)> = req.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic_id, p.partition_index))).collect();
    let forget: Vec<(Uuid, i32)> = req.forgotten_topics_data.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic_id, *p))).collect();
    let fetch = match agent.share_sessions.fetch(&group_id, &member_id, req.share_session_epoch, &named, &forget) {
        Ok(f) => f,
        // A closing request whose session is gone still delivers its acknowledgements.
        Err(SessionError::NotFound) if req.share_session_epoch == FINAL_EPOCH => Vec::new(),
        Err(e) => {
            let (code, why) = session_code(&e);
            return refusal(code, why);
        }
    };
    let mut answers: BTreeMap<(Uuid, i32), Answer> = BTreeMap::new();
    let mut readable: BTreeSet<Uuid> = BTreeSet::new();
    let mut partitions: BTreeMap<(Uuid, i32), PartitionRequest> = BTreeMap::new();
    for key in fetch.iter().chain(&named) {
        let (topic_id, partition) = *key;
        if answers.contains_key(key) {
            continue;
        }
        let mut a = Answer::default();
        match agent.controller.topic(TopicRef::Id(topic_id)) {
            None => a.error = ResponseError::UnknownTopicId.code(),
            Some(t) if !access.check(AclOperation::Read, ResourceType::Topic, &t.name) => {
                a.error = ResponseError::TopicAuthorizationFailed.code()
            }
            Some(t) if partition < 0 || partition >= t.partitions => a.error = ResponseError::UnknownTopicOrPartition.code(),
            Some(_) => {
                readable.insert(topic_id);
                partitions.insert(*key, PartitionRequest { topic_id, partition, acks: Vec::new(), acquire: fetch.contains(key) });
            }
        }
        answers.insert(*key, a);
    }
    for t in &req.topics {
        for p in &t.partitions {
            let key = (t.topic_id, p.partition_index);
            if let Some(a) = answers.get_mut(&key) {
                a.acknowledged = !p.acknowledgement_batches.is_empty();
            }
            if let Some(pr) = partitions.get_mut(&key) {
                pr.acks
                    .extend(ack_batches(p.acknowledgement_batches.iter().map(|b| (b.first_offset, b.last_offset, &b.acknowledge_types))));
            }
        }
    }
    let max_records = u32::try_from(req.max_records)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(SHARE_FETCH_RECORDS_MAX)
        .min(SHARE_FETCH_RECORDS_MAX);
    let max_bytes = u64::try_from(req.max_bytes).ok().filter(|n| *n > 0).unwrap_or(SHARE_FETCH_BYTES_MAX).min(SHARE_FETCH_BYTES_MAX);
    let max_wait = (req.max_wait_ms.max(0) as u64).min(agent.settings.fetch_max_wait_ms_max);
    let deadline = Instant::now() + Duration::from_millis(max_wait);
    let mut commits = agent.controller.commit_watch();
    commits.borrow_and_update();
    let mut request = RecordsRequest {
        group_id: group_id.clone(),
        member_id: member_id.clone(),
        max_records,
        partitions: partitions.into_values().collect(),
        unsent: Vec::new(),
    };
    let mut lock_ms;
    loop {
        let got = match agent.controller.share_records(request.clone()).await {
            Ok(got) => got,
            Err(e) => return refusal(group_code(&e), &e.to_string()),
        };
        lock_ms = got.lock_duration_ms;
        // Acknowledgements are sent once.
        for p in &mut request.partitions {
            p.acks.clear();
        }
        let mut any = false;
        for pa in got.partitions {
            let PartitionAnswer { topic_id, partition, error, ack_error, acquired } = pa;
            let Some(a) = answers.get_mut(&(topic_id, partition)) else { continue };
            if let Some(e) = error {
                a.error = group_code(&e);
                a.error_message = Some(e.to_string());
            }
            if let Some(e) = ack_error {
                a.ack_error = group_code(&e);
                a.ack_message = Some(e.to_string());
            }
            any |= !acquired.is_empty();
            a.acquired.extend(acquired);
        }
        let no_fetch = request.partitions.iter().all(|p| !p.acquire);
        if any || no_fetch || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let unsent = read_acquired(agent, &mut answers, max_bytes).await;
    if !unsent.is_empty() {
        let giveback =
            RecordsRequest { group_id: group_id.clone(), member_id: member_id.clone(), max_records: 0, partitions: Vec::new(), unsent };
        if let Err(e) = agent.controller.share_records(giveback).await {
            // Their locks time out instead: they come back later, counted once more.
            tracing::warn!(group = %group_id, error = %e, "could not give back unsent share records");
        }
    }
    let mut topics: BTreeMap<Uuid, Vec<PartitionData>> = BTreeMap::new();
    for ((topic_id, partition), a) in answers {
        if a.acquired.is_empty() && a.error == 0 && a.ack_error == 0 && !a.acknowledged {
            continue;
        }
        topics.entry(topic_id).or_default().push(
            PartitionData::default()
                .with_partition_index(partition)
                .with_error_code(a.error)
                .with_error_message(a.error_message.map(str_bytes))
                .with_acknowledge_error_code(a.ack_error)
                .with_acknowledge_error_message(a.ack_message.map(str_bytes))
                .with_current_leader(LeaderIdAndEpoch::default().with_leader_id(agent.settings.node_id).with_leader_epoch(LEADER_EPOCH))
                .with_records(Some(a.records.unwrap_or_default()))
                .with_acquired_records(
                    a.acquired
                        .iter()
                        .map(|r| {
                            AcquiredRecords::default()
                                .with_first_offset(r.first_offset)
                                .with_last_offset(r.last_offset)
                                .with_delivery_count(r.delivery_count)
                        })
                        .collect(),
                ),
        );
    }
    ShareFetchResponse::default().with_acquisition_lock_timeout_ms(lock_ms).with_responses(
        topics
            .into_iter()
            .map(|(t, ps)| ShareFetchableTopicResponse::default().with_topic_id(t).with_partitions(ps))
            .collect(),
    )
}

/// Reads the batches holding each partition's acquired records, within `max_bytes` in all (the
/// first partition's first batch always fits); acquired records left out are returned
/// (topic id, partition, first, last) to be given back.
async fn read_acquired(agent: &Agent, answers: &mut BTreeMap<(Uuid, i32), Answer>, max_bytes: u64) -> Vec<(Uuid, i32, i64, i64)> {
    let mut unsent = Vec::new();
    let mut total = 0u64;
    for ((topic_id, partition), a) in answers.iter_mut() {
        let Some(first) = a.acquired.first().map(|r| r.first_offset) else { continue };
        let budget = max_bytes.saturating_sub(total);
        let read = if budget == 0 && total > 0 {
            Ok(None)
        } else {
            agent.read_partition(*topic_id, *partition, first, budget, total == 0, false).await.map(Some)
        };
        let end = match read {
            Ok(Some(r)) => {
                let bytes = r.records.to_bytes();
                total += bytes.len() as u64;
                let end = crate::format::records::batches(&bytes).last().map(|(_, h)| h.base_offset + h.offset_count()).unwrap_or(first);
                a.records = Some(bytes);
                end
            }
            Ok(None) => first,
            Err(e) => {
                a.error = agent_code(&e);
                a.error_message = Some(e.to_string());
                first
            }
        };
        // Acquired offsets at or past `end` were not sent.
        let mut kept = Vec::new();
        for r in a.acquired.drain(..) {
            if r.first_offset >= end {
                unsent.push((*topic_id, *partition, r.first_offset, r.last_offset));
            } else if r.last_offset >= end {
                unsent.push((*topic_id, *partition, end, r.last_offset));
                kept.push(Acquired { last_offset: end - 1, ..r });
            } else {
                kept.push(r);
            }
        }
        a.acquired = kept;
        debug_assert!(a.acquired.iter().all(|r| r.last_offset < end));
    }
    unsent
}

pub async fn share_acknowledge(agent: &Agent, access: &Access<'_>, req: ShareAcknowledgeRequest) -> ShareAcknowledgeResponse {
    let refusal = |code: i16, why: &str| ShareAcknowledgeResponse::default().with_error_code(code).with_error_message(message(why));
    let (Some(group_id), Some(member_id)) = (req.group_id.as_ref(), req.member_id.as_ref()) else {
        return refusal(ResponseError::InvalidRequest.code(), "GroupId and MemberId are required");
    };
    let (group_id, member_id) = (group_id.0.to_string(), member_id.to_string());
    if !access.check(AclOperation::Read, ResourceType::Group, &group_id) {
        return refusal(ResponseError::GroupAuthorizationFailed.code(), "READ on the group is not allowed");
    }
    match agent.share_sessions.acknowledge(&group_id, &member_id, req.share_session_epoch) {
        Ok(()) => {}
        Err(SessionError::NotFound) if req.share_session_epoch == FINAL_EPOCH => {}
        Err(e) => {
            let (code, why) = session_code(&e);
            return refusal(code, why);
        }
    }
    let mut codes: BTreeMap<(Uuid, i32), (i16, Option<String>)> = BTreeMap::new();
    let mut partitions = Vec::new();
    for t in &req.topics {
        let topic = agent.controller.topic(TopicRef::Id(t.topic_id));
        for p in &t.partitions {
            let key = (t.topic_id, p.partition_index);
            let code = match &topic {
                None => ResponseError::UnknownTopicId.code(),
                Some(m) if !access.check(AclOperation::Read, ResourceType::Topic, &m.name) => {
                    ResponseError::TopicAuthorizationFailed.code()
                }
                Some(m) if p.partition_index < 0 || p.partition_index >= m.partitions => ResponseError::UnknownTopicOrPartition.code(),
                Some(_) => {
                    partitions.push(PartitionRequest {
                        topic_id: t.topic_id,
                        partition: p.partition_index,
                        acks: ack_batches(p.acknowledgement_batches.iter().map(|b| (b.first_offset, b.last_offset, &b.acknowledge_types))),
                        acquire: false,
                    });
                    0
                }
            };
            codes.insert(key, (code, None));
        }
    }
    if !partitions.is_empty() {
        let request = RecordsRequest { group_id, member_id, max_records: 0, partitions, unsent: Vec::new() };
        match agent.controller.share_records(request).await {
            Err(e) => return refusal(group_code(&e), &e.to_string()),
            Ok(got) => {
                for pa in got.partitions {
                    if let (Some(e), Some(c)) = (pa.error.or(pa.ack_error), codes.get_mut(&(pa.topic_id, pa.partition))) {
                        *c = (group_code(&e), Some(e.to_string()));
                    }
                }
            }
        }
    }
    let mut topics: BTreeMap<Uuid, Vec<share_acknowledge_response::PartitionData>> = BTreeMap::new();
    for ((topic_id, partition), (code, why)) in codes {
        topics.entry(topic_id).or_default().push(
            share_acknowledge_response::PartitionData::default()
                .with_partition_index(partition)
                .with_error_code(code)
                .with_error_message(why.map(str_bytes))
                .with_current_leader(
                    share_acknowledge_response::LeaderIdAndEpoch::default()
                        .with_leader_id(agent.settings.node_id)
                        .with_leader_epoch(LEADER_EPOCH),
                ),
        );
    }
    ShareAcknowledgeResponse::default().with_responses(
        topics
            .into_iter()
            .map(|(t, ps)| share_acknowledge_response::ShareAcknowledgeTopicResponse::default().with_topic_id(t).with_partitions(ps))
            .collect(),
    )
}

pub async fn describe_offsets(
    agent: &Agent,
    access: &Access<'_>,
    req: DescribeShareGroupOffsetsRequest,
) -> DescribeShareGroupOffsetsResponse {
    let mut groups = Vec::with_capacity(req.groups.len());
    for g in req.groups {
        let id = g.group_id.0.to_string();
        let mut out = DescribeShareGroupOffsetsResponseGroup::default().with_group_id(g.group_id.clone());
        if !access.check(AclOperation::Describe, ResourceType::Group, &id) {
            groups.push(out.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
            continue;
        }
        let topics: Option<Vec<(String, Vec<i32>)>> =
            g.topics.map(|ts| ts.into_iter().map(|t| (t.topic_name.0.to_string(), t.partitions)).collect());
        match agent.controller.share_group_offsets(id.clone(), topics).await {
            Err(e) => out = out.with_error_code(group_code(&e)).with_error_message(message(e.to_string())),
            Ok(offsets) => {
                let mut by_topic: BTreeMap<String, Vec<DescribeShareGroupOffsetsResponsePartition>> = BTreeMap::new();
                for o in offsets {
                    if !access.allows(AclOperation::Describe, ResourceType::Topic, &o.topic) {
                        continue;
                    }
                    let p = DescribeShareGroupOffsetsResponsePartition::default().with_partition_index(o.partition);
                    let p = match (o.start_offset, agent.controller.topic(TopicRef::Name(&o.topic))) {
                        (_, None) => p.with_start_offset(-1).with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                        (Some(start), _) => p.with_start_offset(start).with_leader_epoch(LEADER_EPOCH),
                        (None, _) => p.with_start_offset(-1),
                    };
                    by_topic.entry(o.topic).or_default().push(p);
                }
                out = out.with_topics(
                    by_topic
                        .into_iter()
                        .map(|(name, ps)| {
                            let id = agent.controller.topic(TopicRef::Name(&name)).map_or(Uuid::nil(), |t| t.id);
                            DescribeShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(TopicName(str_bytes(name)))
                                .with_topic_id(id)
                                .with_partitions(ps)
                        })
                        .collect(),
                );
            }
        }
        groups.push(out);
    }
    DescribeShareGroupOffsetsResponse::default().with_groups(groups)
}

pub async fn alter_offsets(agent: &Agent, access: &Access<'_>, req: AlterShareGroupOffsetsRequest) -> AlterShareGroupOffsetsResponse {
    let group_id = req.group_id.0.to_string();
    if !access.check(AclOperation::Read, ResourceType::Group, &group_id) {
        return AlterShareGroupOffsetsResponse::default().with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let mut asked = Vec::new();
    let mut denied = BTreeSet::new();
    for t in &req.topics {
        let name = t.topic_name.0.to_string();
        if !access.check(AclOperation::Read, ResourceType::Topic, &name) {
            denied.insert(name.clone());
        }
        for p in &t.partitions {
            asked.push((name.clone(), p.partition_index, p.start_offset));
        }
    }
    let allowed: Vec<(String, i32, i64)> = asked.iter().filter(|(t, _, _)| !denied.contains(t)).cloned().collect();
    let results = if allowed.is_empty() { Ok(Vec::new()) } else { agent.controller.alter_share_group_offsets(group_id, allowed).await };
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            return AlterShareGroupOffsetsResponse::default()
                .with_error_code(group_code(&e))
                .with_error_message(message(e.to_string()));
        }
    };
    let mut results = results.into_iter();
    let mut by_topic: BTreeMap<String, Vec<AlterShareGroupOffsetsResponsePartition>> = BTreeMap::new();
    for (topic, partition, _) in asked {
        let code = if denied.contains(&topic) {
            ResponseError::TopicAuthorizationFailed.code()
        } else {
            results.next().and_then(|r| r.err()).map_or(0, |e| group_code(&e))
        };
        by_topic
            .entry(topic)
            .or_default()
            .push(AlterShareGroupOffsetsResponsePartition::default().with_partition_index(partition).with_error_code(code));
    }
    AlterShareGroupOffsetsResponse::default().with_responses(
        by_topic
            .into_iter()
            .map(|(name, ps)| {
                let id = agent.controller.topic(TopicRef::Name(&name)).map_or(Uuid::nil(), |t| t.id);
                AlterShareGroupOffsetsResponseTopic::default()
                    .with_topic_name(TopicName(str_bytes(name)))
                    .with_topic_id(id)
                    .with_partitions(ps)
            })
            .collect(),
    )
}

pub async fn delete_offsets(agent: &Agent, access: &Access<'_>, req: DeleteShareGroupOffsetsRequest) -> DeleteShareGroupOffsetsResponse {
    let group_id = req.group_id.0.to_string();
    if !access.check(AclOperation::Delete, ResourceType::Group, &group_id) {
        return DeleteShareGroupOffsetsResponse::default().with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let names: Vec<String> = req.topics.iter().map(|t| t.topic_name.0.to_string()).collect();
    let (allowed, denied): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| access.check(AclOperation::Read, ResourceType::Topic, n));
    let results =
        if allowed.is_empty() { Ok(Vec::new()) } else { agent.controller.delete_share_group_offsets(group_id, allowed.clone()).await };
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            return DeleteShareGroupOffsetsResponse::default()
                .with_error_code(group_code(&e))
                .with_error_message(message(e.to_string()));
        }
    };
    let mut out: Vec<DeleteShareGroupOffsetsResponseTopic> = allowed
        .into_iter()
        .zip(results)
        .map(|(name, r)| {
            let t = DeleteShareGroupOffsetsResponseTopic::default().with_topic_name(TopicName(str_bytes(name)));
            match r {
                Ok(id) => t.with_topic_id(id),
                Err(e) => t.with_error_code(group_code(&e)).with_error_message(message(e.to_string())),
            }
        })
        .collect();
    out.extend(denied.into_iter().map(|name| {
        DeleteShareGroupOffsetsResponseTopic::default()
            .with_topic_name(TopicName(str_bytes(name)))
            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
    }));
    DeleteShareGroupOffsetsResponse::default().with_responses(out)
}
