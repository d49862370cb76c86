//! State machine transitions and Kafka error codes of the group coordinator, on tokio's paused
//! clock (deadlines move only when a test advances time or every task waits on a timer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::*;
use crate::api::groups::CommitOffset;
use crate::clock::{ManualClock, SeededEntropy};
use crate::controller::store::sqlite::SqliteStore;

struct Topics(std::sync::Mutex<HashMap<String, Arc<TopicMeta>>>);

impl Topics {
    /// Creates topic `name` (ids in creation order, from 1).
    fn add(&self, name: &str, partitions: i32) {
        let mut m = self.0.lock().unwrap();
        let id = Uuid::from_u128(m.len() as u128 + 1);
        m.insert(name.to_string(), Arc::new(TopicMeta { id, name: name.into(), partitions, configs: Default::default() }));
    }
}

impl TopicLookup for Topics {
    fn by_name(&self, name: &str) -> Option<Arc<TopicMeta>> {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn by_id(&self, id: Uuid) -> Option<Arc<TopicMeta>> {
        self.0.lock().unwrap().values().find(|t| t.id == id).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
    /// Every partition holds offsets [0, 10).
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Option<crate::api::PartitionOffsets> {
        self.by_id(topic_id)
            .filter(|t| (0..t.partitions).contains(&partition))
            .map(|_| crate::api::PartitionOffsets { log_start_offset: 0, next_offset: 10 })
    }
}

fn topics() -> Arc<Topics> {
    let t = Topics(Default::default());
    t.add("t", 4);
    t.add("u", 2);
    Arc::new(t)
}

fn coordinator(db: &std::path::Path) -> Arc<GroupCoordinator> {
    coordinator_with(db, topics())
}

fn coordinator_with(db: &std::path::Path, topics: Arc<Topics>) -> Arc<GroupCoordinator> {
    let store = Arc::new(SqliteStore::open(db).unwrap());
    GroupCoordinator::open(store, topics, Arc::new(ManualClock::new(1_000)), Arc::new(SeededEntropy::new(9)), GroupSettings::default())
        .unwrap()
}

fn join_req(member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member.into(),
        group_instance_id: instance.map(String::from),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{p}")))).collect(),
        require_known_member_id: instance.is_none(),
        client: ClientInfo { client_id: "client".into(), client_host: "/127.0.0.1".into() },
    }
}

fn sync_req(member: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        generation_id: generation,
        member_id: member.into(),
        group_instance_id: None,
        protocol_type: Some("consumer".into()),
        protocol_name: None,
        assignments: assignments.iter().map(|(m, a)| (m.to_string(), Bytes::from(a.to_string()))).collect(),
    }
}

fn spawn_join(c: &Arc<GroupCoordinator>, req: JoinRequest) -> JoinHandle<JoinResponse> {
    let c = c.clone();
    tokio::spawn(async move { c.join(req).await })
}

/// Lets spawned tasks (timers, waiting joins) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A dynamic member through the v4+ round trip: MEMBER_ID_REQUIRED, then the real join.
async fn join_new(c: &Arc<GroupCoordinator>) -> JoinHandle<JoinResponse> {
    let first = c.join(join_req("", None, &["range"])).await;
    assert_eq!(first.error, Some(GroupError::MemberIdRequired));
    assert!(first.member_id.starts_with("client-"), "{}", first.member_id);
    spawn_join(c, join_req(&first.member_id, None, &["range"]))
}

fn state(c: &GroupCoordinator) -> String {
    c.describe_group("g").map(|d| d.state).unwrap_or_else(|e| format!("{e:?}"))
}

#[tokio::test(start_paused = true)]
async fn a_member_joins_syncs_and_heartbeats_with_kafka_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let mut bad = join_req("", None, &["range"]);
    bad.session_timeout_ms = 10;
    assert_eq!(c.join(bad).await.error, Some(GroupError::InvalidSessionTimeout));
    let mut bad = join_req("", None, &["range"]);
    bad.group_id = String::new();
    assert_eq!(c.join(bad).await.error, Some(GroupError::InvalidGroupId));
    assert_eq!(c.join(join_req("who", None, &["range"])).await.error, Some(GroupError::UnknownMemberId));

    // The first rebalance waits for the initial delay (auto-advanced by the paused clock).
    let a = join_new(&c).await.await.unwrap();
    assert_eq!(a.error, None);
    assert_eq!((a.generation_id, a.leader.as_str(), a.protocol_name.as_deref()), (1, a.member_id.as_str(), Some("range")));
    assert_eq!(a.members.len(), 1);
    assert_eq!(a.members[0].metadata, Bytes::from("meta-range"));
    assert_eq!(state(&c), "CompletingRebalance");

    assert_eq!(c.heartbeat("g", &a.member_id, None, 1), Ok(()));
    let s = c.sync(sync_req(&a.member_id, 1, &[(&a.member_id, "p0-3")])).await.unwrap();
    assert_eq!(s.assignment, Bytes::from("p0-3"));
    assert_eq!(state(&c), "Stable");
    assert_eq!(c.heartbeat("g", &a.member_id, None, 0), Err(GroupError::IllegalGeneration));
    assert_eq!(c.heartbeat("g", "nobody", None, 1), Err(GroupError::UnknownMemberId));
    assert_eq!(c.heartbeat("other", &a.member_id, None, 1), Err(GroupError::UnknownMemberId));
    assert_eq!(c.sync(sync_req(&a.member_id, 7, &[])).await, Err(GroupError::IllegalGeneration));
    let mut wrong = sync_req(&a.member_id, 1, &[]);
    wrong.protocol_type = Some("connect".into());
    assert_eq!(c.sync(wrong).await, Err(GroupError::InconsistentGroupProtocol));
    // A second member must speak the same protocol type and share a protocol.
    let mut other = join_req("", None, &["range"]);
    other.protocol_type = "connect".into();
    assert_eq!(c.join(other).await.error, Some(GroupError::InconsistentGroupProtocol));
    assert_eq!(c.join(join_req("", None, &["roundrobin"])).await.error, Some(GroupError::InconsistentGroupProtocol));

    // Leaving empties the group; without committed offsets it is forgotten (Kafka: Dead).
    assert_eq!(c.leave("g", &[(a.member_id.clone(), None)]), Ok(vec![Ok(())]));
    assert_eq!(state(&c), "GroupIdNotFound");
    assert_eq!(c.leave("g", &[(a.member_id.clone(), None)]), Err(GroupError::UnknownMemberId));
}

#[tokio::test(start_paused = true)]
async fn a_new_member_rebalances_and_an_expired_member_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let a = join_new(&c).await.await.unwrap();
    c.sync(sync_req(&a.member_id, 1, &[(&a.member_id, "all")])).await.unwrap();

    // B joins a stable group: A learns it from its heartbeat and rejoins.
    let b_join = join_new(&c).await;
    settle().await;
    assert_eq!(state(&c), "PreparingRebalance");
    assert_eq!(c.heartbeat("g", &a.member_id, None, 1), Err(GroupError::RebalanceInProgress));
    // Offsets may still be committed with the current generation while preparing.
    let commit = |member: &str, generation: i32| OffsetCommitRequest {
        group_id: "g".into(),
        generation_id_or_member_epoch: generation,
        member_id: member.into(),
        group_instance_id: None,
        api_version: 8,
        offsets: vec![CommitOffset { topic: "t".into(), partition: 0, offset: 5, leader_epoch: -1, metadata: "m".into() }],
    };
    assert_eq!(c.commit_offsets(&commit(&a.member_id, 1)), Ok(vec![Ok(())]));
    let a2 = c.join(join_req(&a.member_id, None, &["range"])).await;
    let b = b_join.await.unwrap();
    assert_eq!((a2.generation_id, b.generation_id), (2, 2));
    assert_eq!(a2.leader, a.member_id, "the leader stays");
    assert_eq!(a2.members.len(), 2);
    assert!(b.members.is_empty(), "only the leader gets the members");
    assert_eq!(c.commit_offsets(&commit(&a.member_id, 2)), Err(GroupError::RebalanceInProgress));

    // B's SyncGroup waits for the leader's.
    let c2 = c.clone();
    let b_id = b.member_id.clone();
    let b_sync = tokio::spawn(async move { c2.sync(sync_req(&b_id, 2, &[])).await });
    settle().await;
    assert!(!b_sync.is_finished());
    c.sync(sync_req(&a.member_id, 2, &[(&a.member_id, "a"), (&b.member_id, "b")])).await.unwrap();
    assert_eq!(b_sync.await.unwrap().unwrap().assignment, Bytes::from("b"));
    assert_eq!(c.commit_offsets(&commit(&b.member_id, 1)), Err(GroupError::IllegalGeneration));

    // B stops heartbeating: after its session timeout (10 s) it is removed and A rebalances.
    for _ in 0..12 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        let _ = c.heartbeat("g", &a.member_id, None, 2);
    }
    assert_eq!(c.heartbeat("g", &b.member_id, None, 2), Err(GroupError::UnknownMemberId));
    assert_eq!(c.heartbeat("g", &a.member_id, None, 2), Err(GroupError::RebalanceInProgress));
    let a3 = c.join(join_req(&a.member_id, None, &["range"])).await;
    assert_eq!((a3.generation_id, a3.members.len()), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_static_member_comes_back_without_a_rebalance_and_fences_its_old_id() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let s1 = spawn_join(&c, join_req("", Some("inst-1"), &["range"]));
    let s2 = spawn_join(&c, join_req("", Some("inst-2"), &["range"]));
    let (s1, s2) = (s1.await.unwrap(), s2.await.unwrap());
    assert_eq!((s1.generation_id, s2.generation_id), (1, 1), "both joined in the initial delay");
    assert!(s1.member_id.starts_with("inst-1-"));
    let leader = if s1.members.is_empty() { &s2 } else { &s1 };
    let c2 = c.clone();
    let follower = if s1.members.is_empty() { s1.member_id.clone() } else { s2.member_id.clone() };
    let f = tokio::spawn(async move {
        let mut r = sync_req(&follower, 1, &[]);
        r.group_instance_id = None;
        c2.sync(r).await
    });
    c.sync(sync_req(&leader.member_id, 1, &[(&s1.member_id, "one"), (&s2.member_id, "two")])).await.unwrap();
    f.await.unwrap().unwrap();

    // inst-1 restarts: same generation, its assignment, no rebalance.
    let back = c.join(join_req("", Some("inst-1"), &["range"])).await;
    assert_eq!(back.error, None);
    assert_eq!(back.generation_id, 1);
    assert_ne!(back.member_id, s1.member_id);
    assert_eq!(state(&c), "Stable");
    let mut again = sync_req(&back.member_id, 1, &[]);
    again.group_instance_id = Some("inst-1".into());
    assert_eq!(c.sync(again).await.unwrap().assignment, Bytes::from("one"));
    assert_eq!(c.heartbeat("g", &s1.member_id, Some("inst-1"), 1), Err(GroupError::FencedInstanceId));
    assert_eq!(c.heartbeat("g", &s2.member_id, Some("inst-2"), 1), Ok(()));
    // The admin client removes a static member by instance id alone.
    assert_eq!(
        c.leave("g", &[(String::new(), Some("inst-2".into())), (String::new(), Some("nope".into()))]),
        Ok(vec![Ok(()), Err(GroupError::UnknownMemberId)])
    );
    assert_eq!(state(&c), "PreparingRebalance");
}

#[tokio::test(start_paused = true)]
async fn offsets_are_checked_persisted_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let c = coordinator(&db);
    let req = |generation: i32, api_version: i16, offsets: Vec<CommitOffset>| OffsetCommitRequest {
        group_id: "simple".into(),
        generation_id_or_member_epoch: generation,
        member_id: String::new(),
        group_instance_id: None,
        api_version,
        offsets,
    };
    let off = |topic: &str, partition: i32, offset: i64, metadata: &str| CommitOffset {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: 3,
        metadata: metadata.into(),
    };
    assert_eq!(c.commit_offsets(&req(4, 8, vec![off("t", 0, 1, "")])), Err(GroupError::IllegalGeneration));
    assert_eq!(c.commit_offsets(&req(4, 9, vec![off("t", 0, 1, "")])), Err(GroupError::GroupIdNotFound));
    let long = "x".repeat(5000);
    let results = c
        .commit_offsets(&req(-1, 8, vec![off("t", 0, 7, "hé"), off("t", 9, 1, ""), off("nope", 0, 1, ""), off("u", 1, 2, &long)]))
        .unwrap();
    assert_eq!(
        results,
        vec![
            Ok(()),
            Err(GroupError::UnknownTopicOrPartition),
            Err(GroupError::UnknownTopicOrPartition),
            Err(GroupError::OffsetMetadataTooLarge)
        ]
    );
    c.commit_offsets(&req(-1, 8, vec![off("u", 1, 9, "")])).unwrap();
    let listed = c.list_groups(&["empty".into()], &["classic".into()]);
    assert_eq!(listed.iter().map(|g| g.group_id.as_str()).collect::<Vec<_>>(), vec!["simple"]);
    assert!(c.list_groups(&["Stable".into()], &[]).is_empty());
    drop(c);

    // A new coordinator on the same store has them.
    let c = coordinator(&db);
    let all = c.fetch_offsets("simple", None, None).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0],
        (("t".to_string(), 0), Some(CommittedOffset { offset: 7, leader_epoch: 3, metadata: "hé".into(), commit_ms: 1_000 }))
    );
    let asked = c.fetch_offsets("simple", Some(&[("u".into(), 1), ("u".into(), 0)]), None).unwrap();
    assert_eq!(asked[0].1.as_ref().map(|o| o.offset), Some(9));
    assert_eq!(asked[1].1, None);
    assert_eq!(c.fetch_offsets("unknown", Some(&[("t".into(), 0)]), None).unwrap(), vec![(("t".into(), 0), None)]);

    assert_eq!(c.delete_offsets("unknown", &[("t".into(), 0)]), Err(GroupError::GroupIdNotFound));
    assert_eq!(c.delete_offsets("simple", &[("t".into(), 0)]), Ok(vec![Ok(())]));
    assert_eq!(c.fetch_offsets("simple", None, None).unwrap().len(), 1);
    assert_eq!(c.delete_group("simple"), Ok(()));
    assert_eq!(c.delete_group("simple"), Err(GroupError::GroupIdNotFound));
    drop(c);
    let c = coordinator(&db);
    assert!(c.fetch_offsets("simple", None, None).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_group_with_members_is_not_deleted_and_protects_subscribed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    // Subscription v0 to topic "t": version, topics ["t"], user data null.
    let mut sub = vec![0u8, 0, 0, 0, 0, 1, 0, 1, b't'];
    sub.extend_from_slice(&(-1i32).to_be_bytes());
    let mut req = join_req("", Some("i"), &["range"]);
    req.protocols = vec![("range".into(), Bytes::from(sub))];
    let a = c.join(req).await;
    c.sync(sync_req(&a.member_id, 1, &[])).await.unwrap();
    let commit = OffsetCommitRequest {
        group_id: "g".into(),
        generation_id_or_member_epoch: 1,
        member_id: a.member_id.clone(),
        group_instance_id: Some("i".into()),
        api_version: 8,
        offsets: vec![
            CommitOffset { topic: "t".into(), partition: 0, offset: 1, leader_epoch: -1, metadata: String::new() },
            CommitOffset { topic: "u".into(), partition: 0, offset: 1, leader_epoch: -1, metadata: String::new() },
        ],
    };
    assert_eq!(c.commit_offsets(&commit), Ok(vec![Ok(()), Ok(())]));
    assert_eq!(c.delete_group("g"), Err(GroupError::NonEmptyGroup));
    assert_eq!(c.delete_offsets("g", &[("t".into(), 0), ("u".into(), 0)]), Ok(vec![Err(GroupError::GroupSubscribedToTopic), Ok(())]));
    let d = c.describe_group("g").unwrap();
    assert_eq!((d.state.as_str(), d.protocol_data.as_str(), d.members.len()), ("Stable", "range", 1));
    assert_eq!(d.members[0].group_instance_id.as_deref(), Some("i"));
}

fn hb(member: &str, epoch: i32, owned: Option<&[i32]>) -> crate::api::groups::consumer::HeartbeatRequest {
    crate::api::groups::consumer::HeartbeatRequest {
        group_id: "k".into(),
        member_id: member.into(),
        member_epoch: epoch,
        rebalance_timeout_ms: if epoch == 0 { 30_000 } else { -1 },
        subscribed_topic_names: (epoch == 0).then(|| vec!["t".to_string()]),
        owned: owned.map(|ps| [(Uuid::from_u128(1), ps.iter().copied().collect())].into_iter().collect()),
        api_version: 1,
        ..Default::default()
    }
}

fn parts(r: &crate::api::groups::consumer::HeartbeatResponse) -> Option<Vec<i32>> {
    r.assignment.as_ref().map(|a| a.values().flat_map(|ps| ps.iter().copied()).collect())
}

#[tokio::test(start_paused = true)]
async fn kip848_members_reconcile_without_sharing_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let a = c.consumer_heartbeat(hb("a", 0, Some(&[]))).unwrap();
    assert_eq!((a.member_epoch, parts(&a)), (1, Some(vec![0, 1, 2, 3])));
    assert_eq!(a.heartbeat_interval_ms, 5_000);

    // b joins: its target partitions are still a's, so it gets nothing yet, at the new epoch.
    let b = c.consumer_heartbeat(hb("b", 0, Some(&[]))).unwrap();
    assert_eq!((b.member_epoch, parts(&b)), (2, Some(vec![])));
    assert_eq!(c.consumer_describe("k").unwrap().state, "Reconciling");
    // a must first revoke two partitions, keeping its epoch.
    let a = c.consumer_heartbeat(hb("a", 1, Some(&[0, 1, 2, 3]))).unwrap();
    assert_eq!((a.member_epoch, parts(&a)), (1, Some(vec![0, 1])));
    // Until a confirms, b still waits.
    assert_eq!(parts(&c.consumer_heartbeat(hb("b", 2, None)).unwrap()), None);
    let a = c.consumer_heartbeat(hb("a", 1, Some(&[0, 1]))).unwrap();
    assert_eq!(a.member_epoch, 2);
    let b = c.consumer_heartbeat(hb("b", 2, None)).unwrap();
    assert_eq!((b.member_epoch, parts(&b)), (2, Some(vec![2, 3])));
    let d = c.consumer_describe("k").unwrap();
    assert_eq!((d.state.as_str(), d.group_epoch, d.assignment_epoch, d.assignor_name.as_str()), ("Stable", 2, 2, "uniform"));

    // Epochs fence, offsets commit only at the member's epoch.
    assert_eq!(c.consumer_heartbeat(hb("a", 7, None)), Err(GroupError::FencedMemberEpoch));
    assert_eq!(c.consumer_heartbeat(hb("zz", 2, None)), Err(GroupError::UnknownMemberId));
    let mut bad = hb("c", 0, Some(&[]));
    bad.server_assignor = Some("sticky".into());
    assert_eq!(c.consumer_heartbeat(bad), Err(GroupError::UnsupportedAssignor("sticky".into())));
    let commit = |epoch: i32, api_version: i16| OffsetCommitRequest {
        group_id: "k".into(),
        generation_id_or_member_epoch: epoch,
        member_id: "b".into(),
        group_instance_id: None,
        api_version,
        offsets: vec![CommitOffset { topic: "t".into(), partition: 2, offset: 1, leader_epoch: -1, metadata: String::new() }],
    };
    assert_eq!(c.commit_offsets(&commit(1, 9)), Err(GroupError::StaleMemberEpoch));
    assert!(matches!(c.commit_offsets(&commit(2, 8)), Err(GroupError::UnsupportedVersion(_))));
    assert_eq!(c.commit_offsets(&commit(2, 9)), Ok(vec![Ok(())]));
    // KIP-1251: a commit a sent at epoch 1, arriving after it moved to epoch 2, still lands for
    // the partitions a has owned since epoch 1, not for one it gave up, nor at a future epoch.
    let late = |partition: i32, epoch: i32| OffsetCommitRequest {
        member_id: "a".into(),
        generation_id_or_member_epoch: epoch,
        offsets: vec![CommitOffset { topic: "t".into(), partition, offset: 5, leader_epoch: -1, metadata: String::new() }],
        ..commit(epoch, 9)
    };
    assert_eq!(c.commit_offsets(&late(0, 1)), Ok(vec![Ok(())]));
    assert_eq!(c.commit_offsets(&late(2, 1)), Err(GroupError::StaleMemberEpoch));
    assert_eq!(c.commit_offsets(&late(1, 3)), Err(GroupError::StaleMemberEpoch));
    assert_eq!(c.commit_offsets(&late(1, 0)), Err(GroupError::StaleMemberEpoch));
    assert_eq!(c.fetch_offsets("k", None, Some(("b", 1))), Err(GroupError::StaleMemberEpoch));
    assert_eq!(c.delete_offsets("k", &[("t".into(), 2)]), Ok(vec![Err(GroupError::GroupSubscribedToTopic)]));

    // b stops heartbeating: after the session timeout (45 s) a gets everything back.
    let mut last = None;
    for _ in 0..50 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        let epoch = last.as_ref().map_or(2, |r: &crate::api::groups::consumer::HeartbeatResponse| r.member_epoch);
        let r = c.consumer_heartbeat(hb("a", epoch, None)).unwrap();
        if r.assignment.is_some() {
            last = Some(r);
        }
    }
    let a = last.unwrap();
    assert_eq!((a.member_epoch, parts(&a)), (3, Some(vec![0, 1, 2, 3])));
    // Leaving empties the group; its offsets stay.
    let left = c.consumer_heartbeat(hb("a", consumer::LEAVE_EPOCH, None)).unwrap();
    assert_eq!(left.member_epoch, -1);
    assert_eq!(c.list_groups(&[], &["consumer".into()])[0].state, "Empty");
}

#[tokio::test(start_paused = true)]
async fn kip848_a_regex_subscription_picks_up_a_topic_created_after_the_member_joined() {
    let dir = tempfile::tempdir().unwrap();
    let topics = topics();
    topics.add("__consumer_offsets", 50);
    let c = coordinator_with(&dir.path().join("c.db"), topics.clone());
    let by_regex = |epoch: i32, regex: Option<&str>| crate::api::groups::consumer::HeartbeatRequest {
        subscribed_topic_names: None,
        subscribed_topic_regex: regex.map(str::to_string),
        ..hb("a", epoch, Some(&[]))
    };
    // Whole names only ("t" and not "u"), Kafka's error for a bad one.
    assert!(matches!(c.consumer_heartbeat(by_regex(0, Some("(t"))), Err(GroupError::InvalidRegularExpression(_))));
    let a = c.consumer_heartbeat(by_regex(0, Some("t|t2|x.*"))).unwrap();
    assert_eq!((a.member_epoch, parts(&a)), (1, Some(vec![0, 1, 2, 3])));
    let described = c.consumer_describe("k").unwrap();
    assert_eq!(described.members[0].subscribed_topic_regex.as_deref(), Some("t|t2|x.*"));

    // t2 is created: within a regex refresh, the next heartbeat bumps the epoch and assigns it.
    topics.add("t2", 3);
    tokio::time::advance(consumer::REGEX_REFRESH).await;
    let a = c.consumer_heartbeat(by_regex(1, None)).unwrap();
    let assigned = a.assignment.clone().unwrap();
    assert_eq!(a.member_epoch, 2);
    assert_eq!(assigned.get(&Uuid::from_u128(4)).map(|ps| ps.len()), Some(3), "{assigned:?}");
    assert_eq!(assigned.get(&Uuid::from_u128(1)).map(|ps| ps.len()), Some(4), "{assigned:?}");
    // Internal topics match too, as in Kafka 4.4.
    let internal = c.consumer_heartbeat(by_regex(2, Some("__consumer_offsets"))).unwrap();
    assert_eq!(internal.member_epoch, 2, "revoking t and t2 first");
    assert!(
        c.consumer_describe("k").unwrap().members[0]
            .target_assignment
            .iter()
            .any(|(id, _, ps)| *id == Uuid::from_u128(3) && ps.len() == 50)
    );

    // Moving to names clears the regex (an empty one): t2 goes.
    let mut names = by_regex(2, Some(""));
    names.subscribed_topic_names = Some(vec!["u".into()]);
    let a = c.consumer_heartbeat(names).unwrap();
    // It owns nothing (an empty owned list), so it moves at once to the group's epoch 4 (a bump
    // for the regex change, one for the names) and gets u's two partitions, and only those.
    assert_eq!((a.member_epoch, parts(&a).map(|p| p.len())), (4, Some(2)));
    assert_eq!(a.assignment.unwrap().keys().collect::<Vec<_>>(), vec![&Uuid::from_u128(2)]);
    assert!(c.consumer_describe("k").unwrap().members[0].subscribed_topic_regex.is_none());
}

#[test]
fn a_version_1_store_is_migrated_and_keeps_its_data() {
    use crate::controller::store::MetadataStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let store = SqliteStore::open(&db).unwrap();
    store.load("cluster-1").unwrap();
    drop(store);
    // What a version 1 binary left behind: no group_offsets table.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("DROP TABLE group_offsets; PRAGMA user_version = 1;").unwrap();
    drop(c);
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.load("other").unwrap().cluster_id, "cluster-1");
    let rec = |offset| GroupOffsetRecord {
        group_id: "g".into(),
        topic: "t".into(),
        partition: 0,
        offset,
        leader_epoch: -1,
        metadata: "m".into(),
        commit_ms: 1,
    };
    store.commit_group_offsets(&[rec(1)]).unwrap();
    store.commit_group_offsets(&[rec(2)]).unwrap();
    assert_eq!(store.load_group_offsets().unwrap(), vec![rec(2)]);
    let version: i32 = rusqlite::Connection::open(&db).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 8); // migrated through every version to the current one
}

#[tokio::test(start_paused = true)]
async fn kip848_static_member_leaves_for_a_restart_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(&dir.path().join("c.db"));
    let with_instance = |mut r: crate::api::groups::consumer::HeartbeatRequest| {
        r.instance_id = Some("inst".into());
        r
    };
    let a = c.consumer_heartbeat(with_instance(hb("a1", 0, Some(&[])))).unwrap();
    let b = c.consumer_heartbeat(hb("b", 0, Some(&[]))).unwrap();
    assert_eq!((a.member_epoch, b.member_epoch), (1, 2));
    c.consumer_heartbeat(hb("a1", 1, Some(&[0, 1, 2, 3]))).unwrap();
    c.consumer_heartbeat(hb("a1", 1, Some(&[0, 1]))).unwrap();
    let b = c.consumer_heartbeat(hb("b", 2, None)).unwrap();
    assert_eq!(parts(&b), Some(vec![2, 3]));

    // Another process with the same instance id while a1 is active: refused.
    assert_eq!(c.consumer_heartbeat(with_instance(hb("a2", 0, Some(&[])))), Err(GroupError::UnreleasedInstanceId));
    // a1 leaves for a restart (epoch -2): its partitions stay reserved, b does not get them.
    let left = c.consumer_heartbeat(with_instance(hb("a1", consumer::STATIC_LEAVE_EPOCH, None))).unwrap();
    assert_eq!(left.member_epoch, consumer::STATIC_LEAVE_EPOCH);
    assert_eq!(parts(&c.consumer_heartbeat(hb("b", 2, Some(&[2, 3]))).unwrap()), None);
    // a2 (the restarted process) takes over: same epoch, same partitions, no new group epoch.
    let a2 = c.consumer_heartbeat(with_instance(hb("a2", 0, Some(&[])))).unwrap();
    assert_eq!((a2.member_epoch, parts(&a2)), (2, Some(vec![0, 1])));
    assert_eq!(c.consumer_describe("k").unwrap().group_epoch, 2);
    assert_eq!(c.consumer_heartbeat(hb("a1", 2, None)), Err(GroupError::UnknownMemberId));
}

fn share_hb(member: &str, epoch: i32) -> crate::api::share::HeartbeatRequest {
    crate::api::share::HeartbeatRequest {
        group_id: "s".into(),
        member_id: member.into(),
        member_epoch: epoch,
        subscribed_topic_names: (epoch == 0).then(|| vec!["u".to_string()]),
        ..Default::default()
    }
}

fn share_fetch(member: &str, acks: Vec<crate::api::share::AckBatch>, max_records: u32) -> crate::api::share::RecordsRequest {
    crate::api::share::RecordsRequest {
        group_id: "s".into(),
        member_id: member.into(),
        max_records,
        partitions: vec![crate::api::share::PartitionRequest {
            topic_id: Uuid::from_u128(2),
            partition: 0,
            acks,
            acquire: max_records > 0,
        }],
        unsent: vec![],
    }
}

#[tokio::test(start_paused = true)]
async fn share_state_is_durable_and_a_leaving_member_gives_its_records_back() {
    use crate::api::share::AckBatch;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let c = coordinator(&db);
    c.alter_group_configs("s", &[("share.auto.offset.reset".into(), Some("earliest".into()))], false).unwrap();
    assert!(matches!(
        c.alter_group_configs("s", &[("share.delivery.count.limit".into(), Some("99".into()))], false),
        Err(GroupError::InvalidConfig(_))
    ));
    let a = c.share_heartbeat(share_hb("a", 0)).unwrap();
    let b = c.share_heartbeat(share_hb("b", 0)).unwrap();
    assert_eq!(c.list_groups(&[], &["share".into()]).len(), 1);
    let got = c.share_records(share_fetch(&a.member_id, vec![], 4)).unwrap();
    assert_eq!(got.partitions[0].acquired, vec![crate::api::share::Acquired { first_offset: 0, last_offset: 3, delivery_count: 1 }]);
    let accept = AckBatch { first_offset: 0, last_offset: 1, types: vec![1] };
    c.share_records(share_fetch(&a.member_id, vec![accept.clone()], 0)).unwrap();
    let again = c.share_records(share_fetch(&b.member_id, vec![accept], 0)).unwrap();
    assert!(matches!(again.partitions[0].ack_error, Some(GroupError::InvalidRecordState(_))), "b does not hold 0-1");
    // a leaves: 2 and 3 are b's to take, on their second delivery.
    c.share_heartbeat(share_hb(&a.member_id, -1)).unwrap();
    let got = c.share_records(share_fetch(&b.member_id, vec![], 2)).unwrap();
    assert_eq!(got.partitions[0].acquired, vec![crate::api::share::Acquired { first_offset: 2, last_offset: 3, delivery_count: 2 }]);
    drop(c);
    // A new coordinator on the same store: offsets 0-1 stay done, 2-3 keep their count.
    let c = coordinator(&db);
    let offsets = c.share_offsets("s", None).unwrap();
    let of = |p: i32| offsets.iter().find(|o| o.partition == p).and_then(|o| o.start_offset);
    assert_eq!((of(0), of(1)), (Some(2), Some(0)), "partition 1 (b's) was created at the log start and never read");
    let m = c.share_heartbeat(share_hb("m", 0)).unwrap();
    let got = c.share_records(share_fetch(&m.member_id, vec![], 3)).unwrap();
    assert_eq!(
        got.partitions[0].acquired,
        vec![
            crate::api::share::Acquired { first_offset: 2, last_offset: 3, delivery_count: 3 },
            crate::api::share::Acquired { first_offset: 4, last_offset: 4, delivery_count: 1 }
        ]
    );
    assert_eq!(c.alter_share_offsets("s", &[("u".into(), 0, 0)]), Err(GroupError::NonEmptyGroup));
    c.share_heartbeat(share_hb(&m.member_id, -1)).unwrap();
    c.alter_share_offsets("s", &[("u".into(), 0, 0)]).unwrap().into_iter().for_each(|r| r.unwrap());
    c.delete_group("s").unwrap();
    assert!(c.share_offsets("s", None).is_err());
    drop(c);
    assert!(coordinator(&db).list_groups(&[], &[]).is_empty(), "deleted with its state");
}
mod streams_groups {
    use super::*;
    use crate::api::groups::streams::{
        HeartbeatRequest, HeartbeatResponse, STATUS_INCORRECTLY_PARTITIONED_TOPICS, STATUS_MISSING_INTERNAL_TOPICS,
        STATUS_MISSING_SOURCE_TOPICS, Subtopology, Tasks, TopicInfo, Topology,
    };

    /// Word count's shape: subtopology 0 reads `t` and writes `app-rep`; 1 reads `app-rep`
    /// and keeps a store with changelog `app-chg`.
    fn topology() -> Topology {
        let info = |n: &str| TopicInfo { name: n.into(), partitions: 0, replication_factor: 0, configs: vec![] };
        Topology {
            epoch: 0,
            subtopologies: vec![
                Subtopology {
                    id: "0".into(),
                    source_topics: vec!["t".into()],
                    repartition_sink_topics: vec!["app-rep".into()],
                    ..Default::default()
                },
                Subtopology {
                    id: "1".into(),
                    repartition_source_topics: vec![info("app-rep")],
                    changelog_topics: vec![TopicInfo { configs: vec![("cleanup.policy".into(), "compact".into())], ..info("app-chg") }],
                    ..Default::default()
                },
            ],
        }
    }

    fn shb(member: &str, epoch: i32, active: Option<Tasks>) -> HeartbeatRequest {
        HeartbeatRequest {
            group_id: "app".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: if epoch == 0 { 30_000 } else { -1 },
            topology: (epoch == 0).then(topology),
            process_id: (epoch == 0).then(|| format!("process-{member}")),
            active,
            api_version: 1,
            ..Default::default()
        }
    }

    fn count(t: &Option<Tasks>) -> usize {
        t.as_ref().map_or(0, |t| t.values().map(|ps| ps.len()).sum())
    }

    fn codes(r: &HeartbeatResponse) -> Vec<i8> {
        r.status.iter().map(|s| s.code).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn internal_topics_are_requested_then_tasks_move_only_after_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let t = topics();
        let c = coordinator_with(&dir.path().join("c.db"), t.clone());
        let a = c.streams_heartbeat(shb("a", 0, Some(Tasks::new()))).unwrap();
        assert_eq!(codes(&a), [STATUS_MISSING_INTERNAL_TOPICS]);
        let created: Vec<(&str, i32)> = a.create_topics.iter().map(|c| (c.name.as_str(), c.partitions)).collect();
        assert_eq!(created, [("app-rep", 4), ("app-chg", 4)]);
        assert_eq!(a.create_topics[1].configs, [("cleanup.policy".to_string(), "compact".to_string())]);
        assert_eq!(count(&a.active), 0);
        assert_eq!(c.streams_describe("app").unwrap().state, "NotReady");
        t.add("app-rep", 4);
        t.add("app-chg", 4);
        let a = c.streams_heartbeat(shb("a", a.member_epoch, None)).unwrap();
        assert!(a.status.is_empty() && a.create_topics.is_empty(), "{a:?}");
        assert_eq!((a.member_epoch, count(&a.active)), (2, 8));
        let all = a.active.clone().unwrap();

        // b joins: its target tasks are still a's, so it gets none yet.
        let b = c.streams_heartbeat(shb("b", 0, Some(Tasks::new()))).unwrap();
        assert_eq!((b.member_epoch, count(&b.active)), (3, 0));
        assert_eq!(c.streams_describe("app").unwrap().state, "Reconciling");
        // a revokes four tasks first, keeping its epoch.
        let a = c.streams_heartbeat(shb("a", 2, Some(all.clone()))).unwrap();
        assert_eq!((a.member_epoch, count(&a.active)), (2, 4));
        let kept = a.active.clone().unwrap();
        assert_eq!(count(&c.streams_heartbeat(shb("b", 3, None)).unwrap().active), 0, "b waits for a");
        // a confirms: it moves on, and b gets the four tasks a released.
        let a = c.streams_heartbeat(shb("a", 2, Some(kept.clone()))).unwrap();
        assert_eq!(a.member_epoch, 3);
        let b = c.streams_heartbeat(shb("b", 3, None)).unwrap();
        assert_eq!(count(&b.active), 4);
        let mine: std::collections::BTreeSet<(String, i32)> =
            kept.iter().flat_map(|(s, ps)| ps.iter().map(move |p| (s.clone(), *p))).collect();
        let theirs: std::collections::BTreeSet<(String, i32)> =
            b.active.unwrap().iter().flat_map(|(s, ps)| ps.iter().map(move |p| (s.clone(), *p))).collect();
        assert!(mine.is_disjoint(&theirs) && mine.len() + theirs.len() == 8);
        let d = c.streams_describe("app").unwrap();
        assert_eq!((d.state.as_str(), d.group_epoch, d.assignment_epoch, d.members.len()), ("Stable", 3, 3, 2));
        // A task's partition is that of its subtopology's source topic.
        let commit = |member: &str, epoch: i32, (s, partition): &(String, i32)| OffsetCommitRequest {
            group_id: "app".into(),
            generation_id_or_member_epoch: epoch,
            member_id: member.into(),
            group_instance_id: None,
            api_version: 9,
            offsets: vec![CommitOffset {
                topic: if s == "0" { "t".into() } else { "app-rep".into() },
                partition: *partition,
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
            }],
        };
        let a_task = mine.iter().next().unwrap();
        assert_eq!(c.commit_offsets(&commit("a", 3, a_task)).unwrap(), vec![Ok(())]);
        assert_eq!(c.commit_offsets(&commit("a", 2, a_task)).unwrap(), vec![Ok(())], "owned since epoch 2");
        let b_task = theirs.iter().next().unwrap();
        assert_eq!(c.commit_offsets(&commit("a", 2, b_task)), Err(GroupError::StaleMemberEpoch));
        assert_eq!(c.commit_offsets(&commit("a", 4, b_task)), Err(GroupError::StaleMemberEpoch));
        assert_eq!(c.commit_offsets(&commit("zz", 3, b_task)), Err(GroupError::UnknownMemberId));
        assert_eq!(c.commit_offsets(&commit("b", 2, b_task)), Err(GroupError::StaleMemberEpoch), "b owns it since epoch 3");
        assert_eq!(c.fetch_offsets("app", None, Some(("b", 2))), Err(GroupError::StaleMemberEpoch));
        assert!(c.fetch_offsets("app", None, Some(("b", 3))).is_ok());

        // Fencing, and the other protocols see no group of theirs.
        assert_eq!(c.streams_heartbeat(shb("a", 9, None)), Err(GroupError::FencedMemberEpoch));
        assert_eq!(c.streams_heartbeat(shb("zz", 3, None)), Err(GroupError::UnknownMemberId));
        let consumer = crate::api::groups::consumer::HeartbeatRequest {
            group_id: "app".into(),
            member_id: "x".into(),
            rebalance_timeout_ms: 1_000,
            subscribed_topic_names: Some(vec!["t".into()]),
            api_version: 1,
            ..Default::default()
        };
        assert_eq!(c.consumer_heartbeat(consumer), Err(GroupError::GroupIdNotFound));
        assert_eq!(c.consumer_describe("app"), Err(GroupError::GroupIdNotFound));
        assert_eq!(c.describe_group("app"), Err(GroupError::GroupIdNotFound));
        let listed = c.list_groups(&[], &["streams".to_string()]);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].group_id.as_str(), listed[0].group_type.as_str(), listed[0].state.as_str()), ("app", "streams", "Stable"));

        // b stops heartbeating and its session ends; a (heartbeating) gets every task back.
        tokio::time::advance(Duration::from_secs(30)).await;
        let a = c.streams_heartbeat(shb("a", 3, Some(kept))).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        tokio::task::yield_now().await;
        assert_eq!(c.streams_describe("app").unwrap().members.len(), 1, "b expired");
        let a = c.streams_heartbeat(shb("a", a.member_epoch, None)).unwrap();
        assert_eq!(count(&a.active), 8, "{a:?}");
        assert_eq!(c.streams_describe("app").unwrap().members.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_and_badly_partitioned_topics_and_invalid_topologies() {
        let dir = tempfile::tempdir().unwrap();
        let t = topics();
        let c = coordinator_with(&dir.path().join("c.db"), t.clone());
        let mut req = shb("a", 0, None);
        if let Some(top) = req.topology.as_mut() {
            top.subtopologies[0].source_topics.push("nope".into());
        }
        let a = c.streams_heartbeat(req).unwrap();
        assert_eq!(codes(&a), [STATUS_MISSING_SOURCE_TOPICS]);
        assert!(a.status[0].detail.contains("nope") && a.create_topics.is_empty(), "{a:?}");
        assert_eq!(count(&a.active), 0);

        // The changelog exists with the wrong partition count.
        let dir2 = tempfile::tempdir().unwrap();
        let t2 = topics();
        t2.add("app-rep", 4);
        t2.add("app-chg", 3);
        let c2 = coordinator_with(&dir2.path().join("c.db"), t2);
        let a = c2.streams_heartbeat(shb("a", 0, None)).unwrap();
        assert_eq!(codes(&a), [STATUS_INCORRECTLY_PARTITIONED_TOPICS]);
        assert!(a.status[0].detail.contains("app-chg"), "{a:?}");

        // Shape errors are refused, never a panic.
        let mut req = shb("b", 0, None);
        if let Some(top) = req.topology.as_mut() {
            top.subtopologies[1]
                .copartition_groups
                .push(crate::api::groups::streams::CopartitionGroup { repartition_source_topics: vec![7], ..Default::default() });
        }
        assert!(matches!(c.streams_heartbeat(req), Err(GroupError::StreamsInvalidTopology(_))));
        let mut req = shb("b", 0, None);
        if let Some(top) = req.topology.as_mut() {
            top.subtopologies[1].id = "0".into();
        }
        assert!(matches!(c.streams_heartbeat(req), Err(GroupError::StreamsInvalidTopology(_))));
        let mut req = shb("b", 0, None);
        req.topology = None;
        assert!(matches!(c.streams_heartbeat(req), Err(GroupError::InvalidRequest(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn standby_tasks_go_to_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let t = topics();
        t.add("app-rep", 4);
        t.add("app-chg", 4);
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let settings = GroupSettings { streams_num_standby_replicas: 1, ..GroupSettings::default() };
        let c = GroupCoordinator::open(store, t, Arc::new(ManualClock::new(1_000)), Arc::new(SeededEntropy::new(9)), settings).unwrap();
        let a = c.streams_heartbeat(shb("a", 0, Some(Tasks::new()))).unwrap();
        assert_eq!((count(&a.active), count(&a.standby)), (8, 0), "alone: no other process for standbys");
        let b = c.streams_heartbeat(shb("b", 0, Some(Tasks::new()))).unwrap();
        let a = c.streams_heartbeat(shb("a", a.member_epoch, a.active.clone())).unwrap();
        let a = c.streams_heartbeat(shb("a", a.member_epoch, a.active.clone())).unwrap();
        let b = c.streams_heartbeat(shb("b", b.member_epoch, None)).unwrap();
        assert_eq!((count(&a.active), count(&b.active)), (4, 4));
        // Each has the other's active tasks as standbys.
        assert_eq!(a.standby, b.active);
        assert_eq!(b.standby, a.active);
    }
}
