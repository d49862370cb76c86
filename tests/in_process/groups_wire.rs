//! Every advertised version of every group API gets a well-formed answer over one connection
//! (the encoder refuses fields a version lacks, which would close the connection instead).

use std::time::Duration;

use crate::wire::{Conn, s};
use bytes::Bytes;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use sidestream::config::Config;
use tokio::net::TcpStream;

async fn start(dir: &std::path::Path) -> sidestream::server::RunningServer {
    let env = [
        ("SIDESTREAM_AGENT_LISTEN", "127.0.0.1:0"),
        ("SIDESTREAM_AGENT_DATA_DIR", dir.to_str().unwrap()),
        ("SIDESTREAM_METRICS_LISTEN", "127.0.0.1:0"),
        ("SIDESTREAM_GROUPS_INITIAL_REBALANCE_DELAY_MS", "0"),
        ("SIDESTREAM_AGENT_SHUTDOWN_TIMEOUT_MS", "10000"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    sidestream::server::start(&Config::load(None, env).unwrap()).await.unwrap()
}

fn join_v3(group: &str, member: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(60_000)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(s("range")).with_metadata(Bytes::from_static(b"m"))])
}

/// A JoinGroup waiting for a rebalance does not hold up a graceful shutdown: it is answered
/// NOT_COORDINATOR (the client finds the coordinator again after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_joins() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut a = Conn(TcpStream::connect(server.local_addr).await.unwrap(), 0);
    let joined = a.call(3, &join_v3("sd", "")).await;
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(s("sd")))
        .with_generation_id(1)
        .with_member_id(joined.member_id.clone());
    assert_eq!(a.call(3, &sync).await.error_code, 0);
    // B's join waits for A to rejoin (up to the 60 s rebalance timeout).
    let addr = server.local_addr;
    let b = tokio::spawn(async move {
        let mut b = Conn(TcpStream::connect(addr).await.unwrap(), 0);
        b.call(3, &join_v3("sd", "")).await
    });
    let hb = HeartbeatRequest::default()
        .with_group_id(GroupId(s("sd")))
        .with_generation_id(1)
        .with_member_id(joined.member_id.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.call(3, &hb).await.error_code != 27 {
        assert!(tokio::time::Instant::now() < deadline, "no rebalance started");
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    assert!(server.shutdown().await, "shutdown within its timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(b.await.unwrap().error_code, 16, "NOT_COORDINATOR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_of_every_group_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = Conn(TcpStream::connect(server.local_addr).await.unwrap(), 0);
    let topic = TopicName(s("wire"));
    let created = c
        .call(
            7,
            &CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(topic.clone())
                    .with_num_partitions(2)
                    .with_replication_factor(1),
            ]),
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0);

    for v in 0..=6 {
        let mut r = FindCoordinatorRequest::default();
        if v < 4 {
            r = r.with_key(s("g"));
        } else {
            r = r.with_coordinator_keys(vec![s("g"), s("h")]);
        }
        if v >= 1 {
            r = r.with_key_type(1);
        }
        let resp = c.call(v, &r).await;
        if v < 4 {
            assert_eq!((resp.error_code, resp.node_id.0), (0, 1));
        } else {
            assert_eq!(resp.coordinators.len(), 2);
            assert!(resp.coordinators.iter().all(|x| x.error_code == 0 && x.port == server.local_addr.port() as i32));
        }
    }

    for v in 0..=9i16 {
        let group = GroupId(s(&format!("wire-{v}")));
        let instance = (v >= 5).then(|| s(&format!("inst-{v}")));
        let join = |member: &str| {
            let mut r = JoinGroupRequest::default()
                .with_group_id(group.clone())
                .with_session_timeout_ms(10_000)
                .with_member_id(s(member))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(s("range")).with_metadata(Bytes::from_static(b"m"))]);
            if v >= 1 {
                r = r.with_rebalance_timeout_ms(10_000);
            }
            if v >= 5 {
                r = r.with_group_instance_id(instance.clone());
            }
            r
        };
        let mut joined = c.call(v, &join("")).await;
        if v >= 4 && instance.is_none() {
            assert_eq!(joined.error_code, 79, "MEMBER_ID_REQUIRED");
            let id = joined.member_id.to_string();
            joined = c.call(v, &join(&id)).await;
        }
        assert_eq!((joined.error_code, joined.generation_id), (0, 1), "JoinGroup v{v}");
        assert_eq!(joined.members.len(), 1);
        let member = joined.member_id.clone();

        let sv = v.min(5);
        let mut sync = SyncGroupRequest::default()
            .with_group_id(group.clone())
            .with_generation_id(1)
            .with_member_id(member.clone())
            .with_assignments(vec![
                SyncGroupRequestAssignment::default().with_member_id(member.clone()).with_assignment(Bytes::from_static(b"a")),
            ]);
        if sv >= 3 {
            sync = sync.with_group_instance_id(instance.clone());
        }
        if sv >= 5 {
            sync = sync.with_protocol_type(Some(s("consumer"))).with_protocol_name(Some(s("range")));
        }
        let synced = c.call(sv, &sync).await;
        assert_eq!((synced.error_code, synced.assignment.as_ref()), (0, &b"a"[..]), "SyncGroup v{sv}");

        let hv = v.min(4);
        let mut hb = HeartbeatRequest::default().with_group_id(group.clone()).with_generation_id(1).with_member_id(member.clone());
        if hv >= 3 {
            hb = hb.with_group_instance_id(instance.clone());
        }
        assert_eq!(c.call(hv, &hb).await.error_code, 0, "Heartbeat v{hv}");
        assert_eq!(c.call(hv, &hb.clone().with_generation_id(5)).await.error_code, 22, "ILLEGAL_GENERATION");

        let cv = v.clamp(2, 9);
        let mut commit = OffsetCommitRequest::default()
            .with_group_id(group.clone())
            .with_generation_id_or_member_epoch(1)
            .with_member_id(member.clone())
            .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic.clone()).with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(42)
                        .with_committed_metadata(Some(s("md"))),
                ])]);
        if cv >= 7 {
            commit = commit.with_group_instance_id(instance.clone());
        }
        let committed = c.call(cv, &commit).await;
        assert_eq!(committed.topics[0].partitions[0].error_code, 0, "OffsetCommit v{cv}");

        let fv = v.clamp(1, 9);
        let (offset, metadata) = if fv >= 8 {
            let r = OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(group.clone())
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default().with_name(topic.clone()).with_partition_indexes(vec![1])])),
            ]);
            let p = c.call(fv, &r).await.groups[0].topics[0].partitions[0].clone();
            (p.committed_offset, p.metadata)
        } else {
            let r = OffsetFetchRequest::default()
                .with_group_id(group.clone())
                .with_topics(Some(vec![OffsetFetchRequestTopic::default().with_name(topic.clone()).with_partition_indexes(vec![1])]));
            let p = c.call(fv, &r).await.topics[0].partitions[0].clone();
            (p.committed_offset, p.metadata)
        };
        assert_eq!((offset, metadata.as_deref()), (42, Some("md")), "OffsetFetch v{fv}");

        let dv = v.min(6);
        let described = c.call(dv, &DescribeGroupsRequest::default().with_groups(vec![group.clone(), GroupId(s("nope"))])).await;
        assert_eq!(described.groups[0].group_state.as_str(), "Stable", "DescribeGroups v{dv}");
        assert_eq!(described.groups[0].members[0].member_assignment.as_ref(), b"a");
        assert_eq!(described.groups[1].error_code, if dv >= 6 { 69 } else { 0 });

        let lv = v.min(5);
        let mut list = ListGroupsRequest::default();
        if lv >= 4 {
            list = list.with_states_filter(vec![s("stable")]);
        }
        let listed = c.call(lv, &list).await;
        assert!(listed.groups.iter().any(|g| g.group_id == group), "ListGroups v{lv}");

        let leave = if v >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(group.clone())
                .with_members(vec![MemberIdentity::default().with_member_id(member.clone()).with_group_instance_id(instance.clone())])
        } else {
            LeaveGroupRequest::default().with_group_id(group.clone()).with_member_id(member.clone())
        };
        let left = c.call(v.min(5), &leave).await;
        assert_eq!(left.error_code, 0, "LeaveGroup v{}", v.min(5));
        assert!(left.members.iter().all(|m| m.error_code == 0));

        if v <= 2 {
            let deleted = c.call(v, &DeleteGroupsRequest::default().with_groups_names(vec![group.clone()])).await;
            assert_eq!(deleted.results[0].error_code, 0, "DeleteGroups v{v}");
        }
    }

    let deleted = c
        .call(
            0,
            &OffsetDeleteRequest::default().with_group_id(GroupId(s("wire-9"))).with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(topic.clone())
                    .with_partitions(vec![offset_delete_request::OffsetDeleteRequestPartition::default().with_partition_index(1)]),
            ]),
        )
        .await;
    assert_eq!((deleted.error_code, deleted.topics[0].partitions[0].error_code), (0, 0));

    for v in 0..=1 {
        let group = GroupId(s(&format!("wire-848-{v}")));
        let member = if v == 0 { "" } else { "5dG1kDgnRM-kVYM4OTy8Pw" };
        let hb = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(group.clone())
            .with_member_id(s(member))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(10_000)
            .with_subscribed_topic_names(Some(vec![topic.clone()]))
            .with_topic_partitions(Some(Vec::<TopicPartitions>::new()));
        let r = c.call(v, &hb).await;
        assert_eq!((r.error_code, r.member_epoch), (0, 1), "ConsumerGroupHeartbeat v{v}");
        assert_eq!(r.assignment.unwrap().topic_partitions[0].partitions, vec![0, 1]);
        let d = c.call(v, &ConsumerGroupDescribeRequest::default().with_group_ids(vec![group, GroupId(s("wire-3"))])).await;
        assert_eq!(d.groups[0].group_state.as_str(), "Stable", "ConsumerGroupDescribe v{v}");
        assert_eq!(d.groups[0].members[0].assignment.topic_partitions[0].topic_name, topic);
        assert_eq!(d.groups[1].error_code, 69, "a classic group is not a consumer group");
    }
    assert!(server.shutdown().await);
}
