//! Committed offsets: OffsetCommit, OffsetFetch (single group up to v7, several from v8) and
//! OffsetDelete, forwarded to the controller's group coordinator, which persists them.

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

use super::str_bytes;
use crate::agent::Agent;
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

pub async fn offset_commit(agent: &Agent, version: i16, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let mut keys = Vec::new();
    let mut offsets = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            keys.push((t.name.0.to_string(), p.partition_index));
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
    let results: Vec<Result<(), GroupError>> = match agent.controller.commit_offsets(r).await {
        Ok(rs) => rs,
        Err(e) => keys.iter().map(|_| Err(e.clone())).collect(),
    };
    let topics = by_topic(keys.into_iter().zip(results))
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitResponseTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(
                ps.into_iter()
                    .map(|(p, r)| OffsetCommitResponsePartition::default().with_partition_index(p).with_error_code(code(&r)))
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

pub async fn offset_fetch(agent: &Agent, version: i16, req: OffsetFetchRequest) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let partitions = requested(g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect()));
            let member = if version >= 9 { g.member_id.map(|m| (m.to_string(), g.member_epoch)) } else { None };
            let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            let fetched = agent.controller.fetch_offsets(g.group_id.0.to_string(), partitions, member).await;
            let unstable = unstable_offsets(agent, req.require_stable, &g.group_id.0).await;
            groups.push(match fetched.and_then(|f| Ok((f, unstable?))) {
                Err(e) => out.with_error_code(group_code(&e)),
                Ok((found, unstable)) => out.with_topics(
                    by_topic(found)
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
                        .collect(),
                ),
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let partitions = requested(req.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect()));
    let asked = partitions.clone().unwrap_or_default();
    let unstable = unstable_offsets(agent, version >= 7 && req.require_stable, &req.group_id.0).await;
    let fetched = agent.controller.fetch_offsets(req.group_id.0.to_string(), partitions, None).await;
    match fetched.and_then(|f| Ok((f, unstable?))) {
        Ok((found, unstable)) => {
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
            OffsetFetchResponse::default().with_topics(topics)
        }
        // v1 has no top-level error: every asked partition carries it.
        Err(e) if version < 2 => {
            OffsetFetchResponse::default().with_topics(fetch_topics(version, asked.into_iter().map(|p| (p, None)).collect(), Some(&e)))
        }
        Err(e) => OffsetFetchResponse::default().with_error_code(group_code(&e)),
    }
}

fn fetch_topics(
    version: i16,
    found: Vec<(TopicPartition, Option<CommittedOffset>)>,
    error: Option<&GroupError>,
) -> Vec<OffsetFetchResponseTopic> {
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
                            .with_error_code(error.map(group_code).unwrap_or(0))
                    })
                    .collect(),
            )
        })
        .collect()
}

pub async fn offset_delete(agent: &Agent, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let keys: Vec<TopicPartition> = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    match agent.controller.delete_offsets(req.group_id.0.to_string(), keys.clone()).await {
        Err(e) => OffsetDeleteResponse::default().with_error_code(group_code(&e)),
        Ok(results) => OffsetDeleteResponse::default().with_topics(
            by_topic(keys.into_iter().zip(results))
                .into_iter()
                .map(|(t, ps)| {
                    OffsetDeleteResponseTopic::default().with_name(TopicName(str_bytes(t))).with_partitions(
                        ps.into_iter()
                            .map(|(p, r)| OffsetDeleteResponsePartition::default().with_partition_index(p).with_error_code(code(&r)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}
