//! Committed offsets: OffsetCommit, OffsetFetch (single group up to v7, several from v8) and
//! OffsetDelete, forwarded to the controller's group coordinator, which persists them.
//!
//! ACLs (Kafka's): OffsetCommit needs READ on the group and on each topic, OffsetFetch DESCRIBE
//! on the group and each topic (a group's whole list leaves out the topics it may not
//! describe), OffsetDelete DELETE on the group and READ on each topic; a group refused is
//! GROUP_AUTHORIZATION_FAILED, a topic refused TOPIC_AUTHORIZATION_FAILED on its partitions.

use std::collections::HashSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
    TopicName,
};

use super::acls::Access;
use super::str_bytes;
use crate::agent::Agent;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::groups::{self, CommitOffset, CommittedOffset, GroupError, TopicPartition};
use crate::protocol::error::group_code;

fn code(r: &Result<(), GroupError>) -> i16 {
    r.as_ref().err().map(group_code).unwrap_or(0)
}

/// KIP-447 (`require_stable`): partitions of the group whose offsets an ongoing transaction
/// holds. The coordinator unreachable: a retriable group error.
async fn unstable_offsets(agent: &Agent, require_stable: bool, group_id: &str) -> Result<Vec<TopicPartition>, GroupError> {
    if !require_stable {
        return Ok(Vec::new());
    }
    agent
        .controller
        .pending_txn_offsets(group_id.to_string())
        .await
        .map_err(|e| GroupError::Unavailable(e.to_string()))
}

/// Groups consecutive (topic, partition, value) entries by topic, keeping the order.
fn by_topic<T>(items: impl IntoIterator<Item = (TopicPartition, T)>) -> Vec<(String, Vec<(i32, T)>)> {
    let mut out: Vec<(String, Vec<(i32, T)>)> = Vec::new();
    for ((t, p), v) in items {
        match out.last_mut() {
            Some((last, ps)) if *last == t => ps.push((p, v)),
            _ => out.push((t, vec![(p, v)])),
        }
    }
    out
}

/// Kafka's topic rule of OffsetFetch: named topics the client may not describe are not asked
/// (answered TOPIC_AUTHORIZATION_FAILED: the second list); all topics (`None`) stay all, and the
/// answer is filtered ([`visible`]).
type Named = Option<Vec<(String, Vec<i32>)>>;
fn split_describable(access: &Access<'_>, topics: Named) -> (Named, Vec<(String, Vec<i32>)>) {
    match topics {
        None => (None, Vec::new()),
        Some(ts) => {
            let (asked, refused) = ts.into_iter().partition(|(t, _)| access.check(AclOperation::Describe, ResourceType::Topic, t));
            (Some(asked), refused)
        }
    }
}

/// The offsets of topics the client may describe (Kafka filters a group's whole list).
fn visible(access: &Access<'_>, found: Vec<(TopicPartition, Option<CommittedOffset>)>) -> Vec<(TopicPartition, Option<CommittedOffset>)> {
    found.into_iter().filter(|((t, _), _)| access.allows(AclOperation::Describe, ResourceType::Topic, t)).collect()
}

pub async fn offset_commit(agent: &Agent, access: &Access<'_>, version: i16, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_denied = !access.check(AclOperation::Read, ResourceType::Group, &req.group_id.0);
    let refused: HashSet<&str> = if group_denied {
        HashSet::new()
    } else {
        access.refused(AclOperation::Read, ResourceType::Topic, req.topics.iter().map(|t| &*t.name.0))
    };
    // Each partition: its error decided here, or None (the coordinator answers it).
    let mut keys = Vec::new();
    let mut offsets = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let decided = if group_denied {
                Some(ResponseError::GroupAuthorizationFailed.code())
            } else if refused.contains(&*t.name.0) {
                Some(ResponseError::TopicAuthorizationFailed.code())
            } else {
                None
            };
            keys.push(((t.name.0.to_string(), p.partition_index), decided));
            if decided.is_some() {
                continue;
            }
            offsets.push(CommitOffset {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
            });
        }
    }
    let r = groups::OffsetCommitRequest {
        group_id: req.group_id.0.to_string(),
        generation_id_or_member_epoch: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        group_instance_id: if version >= 7 { req.group_instance_id.map(|s| s.to_string()) } else { None },
        api_version: version,
        offsets,
    };
    let asked = r.offsets.len();
    let results: Vec<Result<(), GroupError>> = if asked == 0 {
        Vec::new()
    } else {
        match agent.controller.commit_offsets(r).await {
            Ok(rs) => rs,
            Err(e) => vec![Err(e); asked],
        }
    };
    let mut results = results.into_iter();
    let codes = keys.into_iter().map(|(k, decided)| (k, decided.unwrap_or_else(|| results.next().map_or(0, |r| code(&r)))));
    let topics = by_topic(codes)
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitResponseTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(
                ps.into_iter()
                    .map(|(p, c)| OffsetCommitResponsePartition::default().with_partition_index(p).with_error_code(c))
                    .collect(),
            )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn requested(topics: Option<Vec<(String, Vec<i32>)>>) -> Option<Vec<TopicPartition>> {
    topics.map(|ts| ts.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p))).collect())
}

/// A partition without a committed offset answers offset -1 and empty metadata, as in Kafka.
fn offset_fields(c: &Option<CommittedOffset>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.clone()),
        None => (-1, -1, String::new()),
    }
}

pub async fn offset_fetch(agent: &Agent, access: &Access<'_>, version: i16, req: OffsetFetchRequest) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            if !access.check(AclOperation::Describe, ResourceType::Group, &g.group_id.0) {
                groups.push(out.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
                continue;
            }
            let named = g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
            let all = named.is_none();
            let (named, refused) = split_describable(access, named);
            let partitions = requested(named);
            let member = if version >= 9 { g.member_id.map(|m| (m.to_string(), g.member_epoch)) } else { None };
            let fetched = agent.controller.fetch_offsets(g.group_id.0.to_string(), partitions, member).await;
            let unstable = unstable_offsets(agent, req.require_stable, &g.group_id.0).await;
            groups.push(match fetched.and_then(|f| Ok((f, unstable?))) {
                Err(e) => out.with_error_code(group_code(&e)),
                Ok((found, unstable)) => {
                    let found = if all { visible(access, found) } else { found };
                    let mut topics: Vec<OffsetFetchResponseTopics> = by_topic(found)
                        .into_iter()
                        .map(|(t, ps)| {
                            OffsetFetchResponseTopics::default().with_name(TopicName(str_bytes(t.clone()))).with_partitions(
                                ps.into_iter()
                                    .map(|(p, c)| {
                                        let (offset, epoch, metadata) = offset_fields(&c);
                                        let r = OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(str_bytes(metadata)));
                                        if unstable.iter().any(|(ut, up)| *ut == t && *up == p) {
                                            r.with_committed_offset(-1).with_error_code(ResponseError::UnstableOffsetCommit.code())
                                        } else {
                                            r
                                        }
                                    })
                                    .collect(),
                            )
                        })
                        .collect();
                    topics.extend(refused.into_iter().map(|(t, ps)| {
                        OffsetFetchResponseTopics::default().with_name(TopicName(str_bytes(t))).with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_metadata(Some(str_bytes("")))
                                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                                })
                                .collect(),
                        )
                    }));
                    out.with_topics(topics)
                }
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let named: Named = req.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    if !access.check(AclOperation::Describe, ResourceType::Group, &req.group_id.0) {
        let code = ResponseError::GroupAuthorizationFailed.code();
        // v1 has no top-level error: every asked partition carries it.
        if version < 2 {
            let asked = requested(named).unwrap_or_default().into_iter().map(|p| (p, None)).collect();
            return OffsetFetchResponse::default().with_topics(fetch_topics(version, asked, Some(code)));
        }
        return OffsetFetchResponse::default().with_error_code(code);
    }
    let all = named.is_none();
    let (named, refused) = split_describable(access, named);
    let partitions = requested(named);
    let asked = partitions.clone().unwrap_or_default();
    let unstable = unstable_offsets(agent, version >= 7 && req.require_stable, &req.group_id.0).await;
    let fetched = agent.controller.fetch_offsets(req.group_id.0.to_string(), partitions, None).await;
    let refused: Vec<(TopicPartition, Option<CommittedOffset>)> =
        requested(Some(refused)).unwrap_or_default().into_iter().map(|p| (p, None)).collect();
    let refused = fetch_topics(version, refused, Some(ResponseError::TopicAuthorizationFailed.code()));
    match fetched.and_then(|f| Ok((f, unstable?))) {
        Ok((found, unstable)) => {
            let found = if all { visible(access, found) } else { found };
            let mut topics = fetch_topics(version, found, None);
            // KIP-447: offsets pending in an ongoing transaction are not stable yet.
            for t in &mut topics {
                for p in &mut t.partitions {
                    if unstable.iter().any(|(ut, up)| *ut == *t.name.0 && *up == p.partition_index) {
                        p.committed_offset = -1;
                        p.error_code = ResponseError::UnstableOffsetCommit.code();
                    }
                }
            }
            topics.extend(refused);
            OffsetFetchResponse::default().with_topics(topics)
        }
        // v1 has no top-level error: every asked partition carries it.
        Err(e) if version < 2 => {
            let mut topics = fetch_topics(version, asked.into_iter().map(|p| (p, None)).collect(), Some(group_code(&e)));
            topics.extend(refused);
            OffsetFetchResponse::default().with_topics(topics)
        }
        Err(e) => OffsetFetchResponse::default().with_error_code(group_code(&e)),
    }
}

fn fetch_topics(version: i16, found: Vec<(TopicPartition, Option<CommittedOffset>)>, error: Option<i16>) -> Vec<OffsetFetchResponseTopic> {
    by_topic(found)
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(
                ps.into_iter()
                    .map(|(p, c)| {
                        let (offset, epoch, metadata) = offset_fields(&c);
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                            .with_metadata(Some(str_bytes(metadata)))
                            .with_error_code(error.unwrap_or(0))
                    })
                    .collect(),
            )
        })
        .collect()
}

pub async fn offset_delete(agent: &Agent, access: &Access<'_>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    if !access.check(AclOperation::Delete, ResourceType::Group, &req.group_id.0) {
        return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let refused = access.refused(AclOperation::Read, ResourceType::Topic, req.topics.iter().map(|t| &*t.name.0));
    let all: Vec<TopicPartition> = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let keys: Vec<TopicPartition> = all.iter().filter(|(t, _)| !refused.contains(t.as_str())).cloned().collect();
    let results = if keys.is_empty() { Ok(Vec::new()) } else { agent.controller.delete_offsets(req.group_id.0.to_string(), keys).await };
    match results {
        Err(e) => OffsetDeleteResponse::default().with_error_code(group_code(&e)),
        Ok(results) => {
            let mut results = results.into_iter();
            let codes = all.into_iter().map(|k| {
                let c = if refused.contains(k.0.as_str()) {
                    ResponseError::TopicAuthorizationFailed.code()
                } else {
                    results.next().map_or(0, |r| code(&r))
                };
                (k, c)
            });
            OffsetDeleteResponse::default().with_topics(
                by_topic(codes)
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetDeleteResponseTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(
                            ps.into_iter()
                                .map(|(p, c)| OffsetDeleteResponsePartition::default().with_partition_index(p).with_error_code(c))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        }
    }
}
