//! The store contract, run against every implementation: SQLite always, PostgreSQL when
//! `SIDESTREAM_TEST_POSTGRES_URL` names a server (scripts/test starts one and sets it). Each
//! PostgreSQL test creates its own database and drops it after.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::*;
use crate::api::WalMark;

pub const POSTGRES_URL_ENV: &str = "SIDESTREAM_TEST_POSTGRES_URL";

/// A database of its own on the test server, dropped when this is dropped.
pub struct TestDb {
    base: String,
    name: String,
    pub url: String,
}

impl TestDb {
    /// `None` when no PostgreSQL server is configured for the tests.
    pub fn create() -> Option<TestDb> {
        let base = std::env::var(POSTGRES_URL_ENV).ok().filter(|u| !u.is_empty())?;
        let name = format!("sidestream_test_{}", Uuid::new_v4().simple());
        let mut c = ::postgres::Client::connect(&base, ::postgres::NoTls).expect("connect to the test PostgreSQL");
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let (prefix, _) = base.rsplit_once('/').expect("postgres URL with a database path");
        let url = format!("{prefix}/{name}");
        Some(TestDb { base, name, url })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = ::postgres::Client::connect(&self.base, ::postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

fn topic(name: &str, partitions: i32) -> TopicRecord {
    TopicRecord {
        id: Uuid::new_v4(),
        name: name.into(),
        partitions,
        configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
        created_ms: 5,
    }
}

fn object(key: &str) -> ObjectRecord {
    ObjectRecord { key: key.into(), size_bytes: 1000, agent: "a".into(), committed_ms: 9 }
}

fn extent(t: Uuid, p: i32, base: i64, end: i64, key: &str, position: u64) -> ExtentRecord {
    ExtentRecord {
        topic_id: t,
        partition: p,
        base_offset: base,
        end_offset: end,
        object_key: Arc::from(key),
        position,
        length: 100,
        batch_count: 1,
        max_timestamp: base * 10,
        object_size: 1000,
    }
}

/// Every behaviour the controller relies on.
fn contract(s: &dyn MetadataStore) {
    let snap = s.load("cluster-1").unwrap();
    assert_eq!(snap.cluster_id, "cluster-1");
    assert_eq!(s.load("cluster-2").unwrap().cluster_id, "cluster-1", "the first cluster id sticks");

    let t = topic("t", 2);
    s.create_topic(&t).unwrap();
    assert!(matches!(s.create_topic(&topic("t", 1)), Err(StoreError::Conflict(_))));

    // Commits advance partitions only from the offset they were planned from.
    let e1 = [extent(t.id, 0, 0, 5, "o1", 0), extent(t.id, 1, 0, 2, "o1", 100)];
    let wal = WalMark { log_id: "w".into(), entry_id: 7 };
    let producer: (crate::controller::producers::ProducerKey, ProducerState) =
        ((42, t.id, 0), ProducerState { epoch: 3, batches: VecDeque::new(), last_seen_ms: 77 });
    s.commit_object(&object("o1"), &e1, Some(&wal), std::slice::from_ref(&producer), &TxnEffects::default()).unwrap();
    assert!(matches!(
        s.commit_object(&object("o2"), &[extent(t.id, 0, 3, 6, "o2", 0)], None, &[], &TxnEffects::default()),
        Err(StoreError::Stale(_))
    ));
    assert!(matches!(
        s.commit_object(&object("o1"), &[extent(t.id, 0, 5, 6, "o1", 0)], None, &[], &TxnEffects::default()),
        Err(StoreError::Stale(_))
    ));
    assert_eq!(s.committed_extents("o2").unwrap(), None, "a refused commit writes nothing");
    assert_eq!(s.committed_extents("o1").unwrap().unwrap(), e1.to_vec());
    assert_eq!(s.wal_mark("w").unwrap(), 7);

    // Group commit: all or nothing.
    let o3 = object("o3");
    let o4 = object("o4");
    let e3 = [extent(t.id, 0, 5, 8, "o3", 0)];
    let e4 = [extent(t.id, 0, 8, 9, "o4", 0)];
    let low = WalMark { log_id: "w".into(), entry_id: 3 };
    s.commit_objects(&[(&o3, &e3, Some(&low), &[], &TxnEffects::default()), (&o4, &e4, None, &[], &TxnEffects::default())])
        .unwrap();
    assert_eq!(s.wal_mark("w").unwrap(), 7, "the WAL mark never goes back");
    let o5 = object("o5");
    let o6 = object("o6");
    let e5 = [extent(t.id, 1, 2, 4, "o5", 0)];
    let e6_stale = [extent(t.id, 0, 0, 1, "o6", 0)];
    assert!(matches!(
        s.commit_objects(&[(&o5, &e5, None, &[], &TxnEffects::default()), (&o6, &e6_stale, None, &[], &TxnEffects::default())]),
        Err(StoreError::Stale(_))
    ));
    assert_eq!(s.committed_extents("o5").unwrap(), None, "a failed group commit writes none of it");

    let found = s.find_extents(t.id, 0, 6, 10).unwrap();
    assert_eq!(found.iter().map(|e| e.base_offset).collect::<Vec<_>>(), vec![5, 8]);
    assert_eq!(s.find_extents(t.id, 0, 0, 1).unwrap().len(), 1);
    assert_eq!(s.first_extent_at_or_after(t.id, 0, 51).unwrap().unwrap().base_offset, 8);
    assert_eq!(s.extent_with_max_timestamp(t.id, 0).unwrap().unwrap().base_offset, 8);
    assert_eq!(s.extent_with_max_timestamp(t.id, 1).unwrap().unwrap().base_offset, 0);

    // Orphans: a doomed key can never be committed; a committed one is never doomed.
    assert_eq!(s.doom_uncommitted(&["o1".into(), "o7".into()], 100).unwrap(), vec![false, true]);
    assert!(matches!(
        s.commit_object(&object("o7"), &[extent(t.id, 1, 2, 3, "o7", 0)], None, &[], &TxnEffects::default()),
        Err(StoreError::Conflict(_))
    ));

    let snap = s.load("x").unwrap();
    assert_eq!(snap.topics, vec![t.clone()]);
    let mut parts: Vec<_> = snap.partitions.iter().map(|p| (p.partition, p.next_offset)).collect();
    parts.sort();
    assert_eq!(parts, vec![(0, 9), (1, 2)]);
    assert_eq!(snap.producers.len(), 1);
    assert_eq!(snap.producers[0].0, producer.0);
    assert_eq!(snap.producers[0].1.epoch, 3);
    s.expire_producers(78).unwrap();
    assert!(s.load("x").unwrap().producers.is_empty());

    let a = s.allocate_producer_id().unwrap();
    let b = s.allocate_producer_id().unwrap();
    assert!(b > a && a >= 0);
    let e1 = s.register_agent("agent-1").unwrap();
    let e2 = s.register_agent("agent-1").unwrap();
    assert!(e2 > e1);
    assert_eq!(s.register_agent("agent-2").unwrap(), 1);

    let off = |p, o| GroupOffsetRecord {
        group_id: "g".into(),
        topic: "t".into(),
        partition: p,
        offset: o,
        leader_epoch: -1,
        metadata: String::new(),
        commit_ms: 1,
    };
    s.commit_group_offsets(&[off(0, 5), off(1, 6)]).unwrap();
    s.commit_group_offsets(&[off(0, 7)]).unwrap();
    let mut got = s.load_group_offsets().unwrap();
    got.sort_by_key(|o| o.partition);
    assert_eq!(got, vec![off(0, 7), off(1, 6)]);
    s.delete_group_offsets("g", Some(&[("t".into(), 0)])).unwrap();
    assert_eq!(s.load_group_offsets().unwrap(), vec![off(1, 6)]);
    s.delete_group_offsets("g", None).unwrap();
    assert!(s.load_group_offsets().unwrap().is_empty());

    s.delete_topic(t.id, "t", 10).unwrap();
    assert!(s.load("x").unwrap().topics.is_empty());
    assert!(s.find_extents(t.id, 0, 0, 10).unwrap().is_empty());
}

/// The transactions' part of the contract: their states, open transactions and the aborted
/// index, written with the commits (single and group) that change them, all or nothing.
fn txn_contract(s: &dyn MetadataStore) {
    s.load("c").unwrap();
    let t = topic("tx", 2);
    s.create_topic(&t).unwrap();
    s.put_transaction("app-1", "{\"v\":1}").unwrap();
    s.put_transaction("app-1", "{\"v\":2}").unwrap();
    s.put_transaction("app-2", "{}").unwrap();
    let mut txns = s.load("c").unwrap().transactions;
    txns.sort();
    assert_eq!(txns, vec![("app-1".into(), "{\"v\":2}".into()), ("app-2".into(), "{}".into())]);

    // Producer 7 opens a transaction in partition 0 with its data at 0..3 (single commit).
    let open = OpenTxnRecord { topic_id: t.id, partition: 0, producer_id: 7, first_offset: 0 };
    let idle: (crate::controller::producers::ProducerKey, ProducerState) =
        ((7, t.id, 0), ProducerState { epoch: 0, batches: VecDeque::new(), last_seen_ms: 10 });
    let other: (crate::controller::producers::ProducerKey, ProducerState) =
        ((8, t.id, 1), ProducerState { epoch: 0, batches: VecDeque::new(), last_seen_ms: 10 });
    let opened = TxnEffects { opened: vec![open], ..TxnEffects::default() };
    s.commit_object(&object("d1"), &[extent(t.id, 0, 0, 3, "d1", 0)], None, &[idle.clone(), other.clone()], &opened)
        .unwrap();
    assert_eq!(s.load("c").unwrap().open_txns, vec![open]);
    // Idle for long, but its transaction is open: only the other producer expires.
    s.expire_producers(1_000).unwrap();
    let kept: Vec<_> = s.load("c").unwrap().producers.into_iter().map(|(k, _)| k).collect();
    assert_eq!(kept, vec![idle.0]);

    // The abort marker at offset 3, in a group commit whose other object is stale: nothing of
    // it is written (the transaction stays open, no aborted row, no state, no group offset).
    let offset = GroupOffsetRecord {
        group_id: "g".into(),
        topic: "tx".into(),
        partition: 1,
        offset: 4,
        leader_epoch: -1,
        metadata: "m".into(),
        commit_ms: 2,
    };
    let ended = TxnEffects {
        closed: vec![open],
        aborted: vec![AbortedTxnRecord { topic_id: t.id, partition: 0, producer_id: 7, first_offset: 0, last_offset: 3 }],
        transaction: Some(("app-1".into(), "{\"v\":3}".into())),
        group_offsets: vec![offset.clone()],
        ..TxnEffects::default()
    };
    let (m1, bad) = (object("m1"), object("bad"));
    let marker = [extent(t.id, 0, 3, 4, "m1", 0)];
    let stale = [extent(t.id, 1, 5, 6, "bad", 0)];
    let none = TxnEffects::default();
    assert!(matches!(s.commit_objects(&[(&m1, &marker, None, &[], &ended), (&bad, &stale, None, &[], &none)]), Err(StoreError::Stale(_))));
    let snap = s.load("c").unwrap();
    assert_eq!(snap.open_txns, vec![open]);
    assert!(snap.transactions.contains(&("app-1".into(), "{\"v\":2}".into())));
    assert!(s.aborted_txns(t.id, 0, 0, 100, 10).unwrap().is_empty());
    assert!(s.load_group_offsets().unwrap().is_empty());
    // Alone, the group commit writes all of it.
    s.commit_objects(&[(&m1, &marker, None, &[], &ended)]).unwrap();
    let snap = s.load("c").unwrap();
    assert!(snap.open_txns.is_empty());
    assert!(snap.transactions.contains(&("app-1".into(), "{\"v\":3}".into())));
    assert_eq!(s.load_group_offsets().unwrap(), vec![offset]);
    s.expire_producers(1_000).unwrap();
    assert!(s.load("c").unwrap().producers.is_empty(), "closed: the idle producer expires now");

    // A second abort (producer 9, 4..=6) through the single-commit path; the index answers
    // the aborts overlapping a range, by first offset, at most `limit`.
    let open9 = OpenTxnRecord { topic_id: t.id, partition: 0, producer_id: 9, first_offset: 4 };
    s.commit_object(
        &object("d2"),
        &[extent(t.id, 0, 4, 6, "d2", 0)],
        None,
        &[],
        &TxnEffects { opened: vec![open9], ..TxnEffects::default() },
    )
    .unwrap();
    let abort9 = TxnEffects {
        closed: vec![open9],
        aborted: vec![AbortedTxnRecord { topic_id: t.id, partition: 0, producer_id: 9, first_offset: 4, last_offset: 6 }],
        ..TxnEffects::default()
    };
    s.commit_object(&object("m2"), &[extent(t.id, 0, 6, 7, "m2", 0)], None, &[], &abort9).unwrap();
    assert_eq!(s.aborted_txns(t.id, 0, 0, 7, 10).unwrap(), vec![(7, 0), (9, 4)]);
    assert_eq!(s.aborted_txns(t.id, 0, 0, 7, 1).unwrap(), vec![(7, 0)]);
    assert_eq!(s.aborted_txns(t.id, 0, 3, 4, 10).unwrap(), vec![(7, 0)], "the range ends at the marker");
    assert_eq!(s.aborted_txns(t.id, 0, 4, 5, 10).unwrap(), vec![(9, 4)]);
    assert!(s.aborted_txns(t.id, 0, 7, 100, 10).unwrap().is_empty());
    assert!(s.aborted_txns(t.id, 1, 0, 100, 10).unwrap().is_empty());

    s.delete_transactions(&["app-1".into(), "unknown".into()]).unwrap();
    assert_eq!(s.load("c").unwrap().transactions, vec![("app-2".into(), "{}".into())]);

    // Deleting the topic trims its open transactions and its aborted index.
    let open10 = OpenTxnRecord { topic_id: t.id, partition: 1, producer_id: 10, first_offset: 0 };
    s.commit_object(
        &object("d3"),
        &[extent(t.id, 1, 0, 1, "d3", 0)],
        None,
        &[],
        &TxnEffects { opened: vec![open10], ..TxnEffects::default() },
    )
    .unwrap();
    s.delete_topic(t.id, "tx", 10).unwrap();
    assert!(s.load("c").unwrap().open_txns.is_empty());
    assert!(s.aborted_txns(t.id, 0, 0, 100, 10).unwrap().is_empty());
}

/// Compaction's part: which extents are candidates, and the swap (all or nothing, never
/// touching offsets, listing objects left unreferenced as garbage). Returns the keys the
/// garbage table must hold afterwards.
fn compaction_contract(s: &dyn MetadataStore) -> Vec<String> {
    s.load("cluster-c").unwrap();
    let t = topic("t", 2);
    s.create_topic(&t).unwrap();
    let upload = |key: &str, ms| ObjectRecord { key: key.into(), size_bytes: 1000, agent: "a".into(), committed_ms: ms };
    let (o1, o2) = ("00/a/o1.sso", "00/a/o2.sso");
    let e1 = [extent(t.id, 0, 0, 5, o1, 0), extent(t.id, 1, 0, 2, o1, 100)];
    let e2 = [extent(t.id, 0, 5, 8, o2, 0), extent(t.id, 1, 2, 4, o2, 100)];
    s.commit_object(&upload(o1, 10), &e1, None, &[], &TxnEffects::default()).unwrap();
    s.commit_object(&upload(o2, 20), &e2, None, &[], &TxnEffects::default()).unwrap();

    let uploads = |small_bytes, before, limit| {
        let req = crate::api::CandidatesRequest { small_bytes, committed_before_ms: before, partition_objects: false, after: None, limit };
        s.compaction_candidates(&req).unwrap()
    };
    assert_eq!(uploads(2000, 15, 10), e1.to_vec(), "only objects committed before the cut-off");
    assert_eq!(uploads(2000, 100, 1), e1.to_vec(), "whole objects, oldest first");
    assert_eq!(uploads(2000, 100, 2), [e1.to_vec(), e2.to_vec()].concat());
    assert!(uploads(1000, 100, 10).is_empty(), "only objects smaller than small_bytes");

    // Partition 0's two extents into one per-partition object, as one extent.
    let x = "00/a/x.p.sso";
    let merged = |key: &str, p, base, end| ExtentRecord {
        object_key: Arc::from(key),
        position: 0,
        length: 200,
        batch_count: 2,
        object_size: 300,
        ..extent(t.id, p, base, end, key, 0)
    };
    let swap = |key: &str, old: &[ExtentRecord], new: &[ExtentRecord]| {
        s.replace_extents(&ObjectRecord { key: key.into(), size_bytes: 300, agent: "a".into(), committed_ms: 30 }, old, new)
    };
    let old0 = [e1[0].clone(), e2[0].clone()];
    swap(x, &old0, &[merged(x, 0, 0, 8)]).unwrap();
    assert_eq!(s.find_extents(t.id, 0, 0, 10).unwrap(), vec![merged(x, 0, 0, 8)]);
    assert_eq!(s.committed_extents(x).unwrap().unwrap(), vec![merged(x, 0, 0, 8)]);
    // The same swap again (a lost race): refused, nothing written.
    let y = "00/a/y.p.sso";
    assert!(matches!(swap(y, &old0, &[merged(y, 0, 0, 8)]), Err(StoreError::Stale(_))));
    assert_eq!(s.committed_extents(y).unwrap(), None);
    // One old extent still there, one changed: nothing written, the one there stays.
    let old1 = [e1[1].clone(), ExtentRecord { length: 99, ..e2[1].clone() }];
    assert!(matches!(swap(y, &old1, &[merged(y, 1, 0, 4)]), Err(StoreError::Stale(_))));
    assert_eq!(s.find_extents(t.id, 1, 0, 10).unwrap(), vec![e1[1].clone(), e2[1].clone()]);
    // A key doomed as an orphan can never be swapped in.
    let z = "00/a/z.p.sso";
    assert_eq!(s.doom_uncommitted(&[z.to_string()], 40).unwrap(), vec![true]);
    let old1 = [e1[1].clone(), e2[1].clone()];
    assert!(matches!(swap(z, &old1, &[merged(z, 1, 0, 4)]), Err(StoreError::Conflict(_))));
    assert_eq!(s.find_extents(t.id, 1, 0, 10).unwrap(), old1.to_vec());
    // Candidates among per-partition objects: by partition, from the one after `after`.
    let parts = |after| {
        let req =
            crate::api::CandidatesRequest { small_bytes: 1000, committed_before_ms: i64::MAX, partition_objects: true, after, limit: 10 };
        s.compaction_candidates(&req).unwrap()
    };
    assert_eq!(parts(None), vec![merged(x, 0, 0, 8)]);
    assert!(parts(Some((t.id, 0))).is_empty());
    assert!(uploads(2000, 100, 10).iter().all(|e| e.partition == 1), "partition 0 is no longer in uploads");
    swap(y, &old1, &[merged(y, 1, 0, 4)]).unwrap();
    assert_eq!(parts(None), vec![merged(x, 0, 0, 8), merged(y, 1, 0, 4)]);
    assert!(uploads(2000, 100, 10).is_empty(), "uploads no extent references are no candidates");

    // A partition-sorted object: one swap moves the extents of both partitions of an upload.
    let o3 = "00/a/o3.sso";
    let e3 = [extent(t.id, 0, 8, 10, o3, 0), extent(t.id, 1, 4, 6, o3, 100)];
    s.commit_object(&upload(o3, 50), &e3, None, &[], &TxnEffects::default()).unwrap();
    let moved =
        |e: &ExtentRecord, key: &str, position| ExtentRecord { object_key: Arc::from(key), position, object_size: 1500, ..e.clone() };
    let sorted_swap = |key: &str, old: &[ExtentRecord]| {
        let object = ObjectRecord { key: key.into(), size_bytes: 1500, agent: "a".into(), committed_ms: 60 };
        s.replace_extents(&object, old, &[moved(&e3[0], key, 0), moved(&e3[1], key, 100)])
    };
    // One partition's extent changed meanwhile: neither partition's moves.
    let w = "00/a/w.s.sso";
    assert!(matches!(sorted_swap(w, &[e3[0].clone(), ExtentRecord { length: 99, ..e3[1].clone() }]), Err(StoreError::Stale(_))));
    assert_eq!(s.find_extents(t.id, 0, 8, 10).unwrap(), vec![e3[0].clone()]);
    assert_eq!(s.committed_extents(w).unwrap(), None);
    assert_eq!(uploads(2000, 100, 10), e3.to_vec());
    let sorted = "00/a/s.s.sso";
    sorted_swap(sorted, &e3).unwrap();
    assert_eq!(s.find_extents(t.id, 1, 4, 10).unwrap(), vec![moved(&e3[1], sorted, 100)]);
    // Merge candidates hold every extent of sorted objects, of any size (1,500 bytes, over
    // small_bytes here), by partition then offset; split candidates none of them, though they
    // are smaller than the split's small_bytes.
    let (s0, s1) = (moved(&e3[0], sorted, 0), moved(&e3[1], sorted, 100));
    assert_eq!(parts(None), vec![merged(x, 0, 0, 8), s0, merged(y, 1, 0, 4), s1.clone()]);
    assert_eq!(parts(Some((t.id, 0))), vec![merged(y, 1, 0, 4), s1]);
    assert!(uploads(2000, 100, 10).is_empty(), "sorted objects are no split candidates");
    // Offsets never moved.
    let snap = s.load("x").unwrap();
    let mut ends: Vec<_> = snap.partitions.iter().map(|p| (p.partition, p.log_start_offset, p.next_offset)).collect();
    ends.sort();
    assert_eq!(ends, vec![(0, 0, 10), (1, 0, 6)]);
    vec![o1.to_string(), o2.to_string(), o3.to_string()]
}

/// Retention's part: log starts move forward only, take the extents wholly below them, and an
/// object becomes garbage exactly when its last extent goes; forgotten garbage cannot be
/// committed again; a deleted topic's objects and group offsets go with it.
fn retention_contract(s: &dyn MetadataStore) {
    s.load("c").unwrap();
    let t = topic("r", 2);
    s.create_topic(&t).unwrap();
    let mv = |p: i32, to: i64| LogStartMove { topic_id: t.id, partition: p, log_start_offset: to };
    // o1 holds p0 [0, 5) and p1 [0, 2); o2 holds p0 [5, 8).
    s.commit_object(&object("o1"), &[extent(t.id, 0, 0, 5, "o1", 0), extent(t.id, 1, 0, 2, "o1", 100)], None, &[], &TxnEffects::default())
        .unwrap();
    s.commit_object(&object("o2"), &[extent(t.id, 0, 5, 8, "o2", 0)], None, &[], &TxnEffects::default()).unwrap();
    let sizes = |s: &dyn MetadataStore| {
        let mut v: Vec<(i32, u64)> = s.partition_sizes().unwrap().iter().map(|p| (p.partition, p.extents)).collect();
        v.sort();
        v
    };
    assert_eq!(sizes(s), vec![(0, 2), (1, 1)]);
    // Inside p0's second extent: the first goes, o1 is still referenced by p1.
    s.advance_log_starts(&[mv(0, 6)], 100).unwrap();
    assert_eq!(s.find_extents(t.id, 0, 0, 10).unwrap().iter().map(|e| e.base_offset).collect::<Vec<_>>(), vec![5]);
    assert!(s.garbage(i64::MAX, 10).unwrap().is_empty());
    // Never back; inside p1's extent removes nothing.
    s.advance_log_starts(&[mv(0, 1), mv(1, 1)], 200).unwrap();
    let starts: Vec<i64> = {
        let mut p = s.load("c").unwrap().partitions;
        p.sort_by_key(|p| p.partition);
        p.iter().map(|p| p.log_start_offset).collect()
    };
    assert_eq!(starts, vec![6, 1]);
    assert!(s.garbage(i64::MAX, 10).unwrap().is_empty());
    s.advance_log_starts(&[mv(1, 2)], 300).unwrap();
    assert_eq!(sizes(s), vec![(0, 1)]);
    assert_eq!(s.garbage(299, 10).unwrap(), Vec::<String>::new());
    assert_eq!(s.garbage(300, 10).unwrap(), vec!["o1".to_string()]);
    assert_eq!(s.stored_objects().unwrap(), StoredObjects { objects: 2, bytes: 2000, garbage_objects: 1, garbage_bytes: 1000 });
    // Forgetting skips what is not garbage; a forgotten key is never committed again.
    s.forget_objects(&[("o1".into(), true), ("o2".into(), true)], 400, 0).unwrap();
    assert!(s.garbage(i64::MAX, 10).unwrap().is_empty());
    assert_eq!(s.stored_objects().unwrap(), StoredObjects { objects: 1, bytes: 1000, garbage_objects: 0, garbage_bytes: 0 });
    let again = s.commit_object(&object("o1"), &[extent(t.id, 1, 2, 3, "o1", 0)], None, &[], &TxnEffects::default());
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // Deleting the topic makes garbage of its objects and drops its group offsets.
    let off = GroupOffsetRecord {
        group_id: "g".into(),
        topic: "r".into(),
        partition: 0,
        offset: 1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_ms: 1,
    };
    s.commit_group_offsets(&[off]).unwrap();
    s.delete_topic(t.id, "r", 500).unwrap();
    assert_eq!(s.garbage(500, 10).unwrap(), vec!["o2".to_string()]);
    assert!(s.load_group_offsets().unwrap().is_empty());
    // Without a mark, a forgotten key is forgotten for good; old marks go with the next forget.
    s.forget_objects(&[("o2".into(), false)], 600, 401).unwrap();
    s.commit_object(&object("o1"), &[], None, &[], &TxnEffects::default()).unwrap();
    s.commit_object(&object("o2"), &[], None, &[], &TxnEffects::default()).unwrap();
}

/// CreatePartitions: a topic grows only from the count it has, its old partitions keep their
/// offsets, the new ones start empty and take commits, and they go with the topic.
fn partitions_contract(s: &dyn MetadataStore) {
    s.load("cluster-1").unwrap();
    let t = topic("t", 2);
    s.create_topic(&t).unwrap();
    s.commit_object(&object("o1"), &[extent(t.id, 1, 0, 4, "o1", 0)], None, &[], &TxnEffects::default()).unwrap();
    s.add_partitions(t.id, 2, 5).unwrap();
    assert!(matches!(s.add_partitions(t.id, 2, 6), Err(StoreError::Stale(_))), "planned from an old count");
    assert!(matches!(s.add_partitions(Uuid::new_v4(), 0, 1), Err(StoreError::Stale(_))), "an unknown topic");
    let partitions = |s: &dyn MetadataStore| {
        let mut v: Vec<_> = s.load("x").unwrap().partitions.iter().map(|p| (p.partition, p.log_start_offset, p.next_offset)).collect();
        v.sort();
        v
    };
    let snap = s.load("x").unwrap();
    assert_eq!(snap.topics, vec![TopicRecord { partitions: 5, ..t.clone() }]);
    assert_eq!(partitions(s), vec![(0, 0, 0), (1, 0, 4), (2, 0, 0), (3, 0, 0), (4, 0, 0)]);
    s.commit_object(&object("o2"), &[extent(t.id, 4, 0, 3, "o2", 0)], None, &[], &TxnEffects::default()).unwrap();
    assert_eq!(s.find_extents(t.id, 4, 0, 10).unwrap(), vec![extent(t.id, 4, 0, 3, "o2", 0)]);
    s.delete_topic(t.id, "t", 10).unwrap();
    assert!(partitions(s).is_empty());
}

/// Topic configs: replaced whole per topic, in one transaction; other topics keep theirs; a
/// deleted topic gets none; they survive a reload.
fn topic_config_contract(s: &dyn MetadataStore) {
    s.load("cluster-1").unwrap();
    let (a, b, gone) = (topic("a", 1), topic("b", 1), Uuid::new_v4());
    s.create_topic(&a).unwrap();
    s.create_topic(&b).unwrap();
    let compact = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string()), ("segment.ms".to_string(), "5".to_string())]);
    s.set_topic_configs(&[(a.id, compact.clone()), (gone, compact.clone())]).unwrap();
    let configs = |id: Uuid| s.load("x").unwrap().topics.into_iter().find(|t| t.id == id).map(|t| t.configs);
    assert_eq!(configs(a.id), Some(compact), "retention.ms went back to its default, the new ones are set");
    assert_eq!(configs(b.id), Some(b.configs.clone()), "another topic keeps its configs");
    assert_eq!(configs(gone), None);
    s.set_topic_configs(&[(a.id, BTreeMap::new()), (b.id, BTreeMap::from([("retention.ms".to_string(), "7".to_string())]))])
        .unwrap();
    assert_eq!(configs(a.id), Some(BTreeMap::new()));
    assert_eq!(configs(b.id).unwrap()["retention.ms"], "7");
    s.delete_topic(b.id, "b", 1).unwrap();
    s.set_topic_configs(&[(b.id, BTreeMap::from([("retention.ms".to_string(), "8".to_string())]))]).unwrap();
    s.create_topic(&topic("b", 1)).unwrap();
    assert!(s.load("x").unwrap().topics.iter().all(|t| t.id != b.id), "a deleted topic's configs do not come back");
}

/// ACLs: inserted once however often they are created, deleted exactly, in one transaction.
fn acl_contract(s: &dyn MetadataStore) {
    use crate::api::acl::{AclBinding, AclOperation, AclPermission, PatternType, ResourceType};
    s.load("cluster-1").unwrap();
    assert!(s.acls().unwrap().is_empty());
    let read = AclBinding {
        resource_type: ResourceType::Topic,
        resource_name: "orders".into(),
        pattern_type: PatternType::Literal,
        principal: "User:alice".into(),
        host: "*".into(),
        operation: AclOperation::Read,
        permission: AclPermission::Allow,
    };
    let deny = AclBinding {
        resource_type: ResourceType::TransactionalId,
        resource_name: "tx-".into(),
        pattern_type: PatternType::Prefixed,
        principal: "User:*".into(),
        host: "10.0.0.1".into(),
        operation: AclOperation::TwoPhaseCommit,
        permission: AclPermission::Deny,
    };
    // Differs from `read` in the permission only: another row.
    let read_denied = AclBinding { permission: AclPermission::Deny, ..read.clone() };
    s.alter_acls(&[read.clone(), deny.clone(), read.clone()], &[]).unwrap();
    s.alter_acls(&[read.clone(), read_denied.clone()], &[]).unwrap();
    let mut stored = s.acls().unwrap();
    stored.sort();
    let mut expect = vec![read.clone(), deny.clone(), read_denied.clone()];
    expect.sort();
    assert_eq!(stored, expect, "every field round-trips, a repeated creation is one row");
    // Create and delete in one call; deleting what is not there is no error.
    let cluster = AclBinding {
        resource_type: ResourceType::Cluster,
        resource_name: "kafka-cluster".into(),
        pattern_type: PatternType::Literal,
        operation: AclOperation::Alter,
        ..read.clone()
    };
    s.alter_acls(std::slice::from_ref(&cluster), &[read_denied.clone(), deny.clone(), read_denied]).unwrap();
    let mut stored = s.acls().unwrap();
    stored.sort();
    let mut expect = vec![read, cluster];
    expect.sort();
    assert_eq!(stored, expect);
}

fn share_contract(s: &dyn MetadataStore) {
    use super::SharePartitionRecord;
    s.load("cluster-1").unwrap();
    let t = topic("shared", 2);
    s.create_topic(&t).unwrap();
    let row = |g: &str, p: i32, body: &str| SharePartitionRecord { group_id: g.into(), topic_id: t.id, partition: p, body: body.into() };
    s.put_share_partitions(&[row("g", 0, "a"), row("g", 1, "b"), row("h", 0, "c")]).unwrap();
    s.put_share_partitions(&[row("g", 0, "a2")]).unwrap();
    let sorted = |mut v: Vec<SharePartitionRecord>| {
        v.sort_by(|a, b| (&a.group_id, a.partition).cmp(&(&b.group_id, b.partition)));
        v.into_iter().map(|r| (r.group_id, r.partition, r.body)).collect::<Vec<_>>()
    };
    assert_eq!(
        sorted(s.load_share_partitions().unwrap()),
        vec![("g".into(), 0, "a2".into()), ("g".into(), 1, "b".into()), ("h".into(), 0, "c".into())],
        "an upsert replaces the body"
    );
    s.delete_share_partitions("g", Some(&[(t.id, 1)])).unwrap();
    s.delete_share_partitions("h", None).unwrap();
    assert_eq!(sorted(s.load_share_partitions().unwrap()), vec![("g".into(), 0, "a2".into())]);
    s.delete_topic(t.id, &t.name, 0).unwrap();
    assert!(s.load_share_partitions().unwrap().is_empty(), "a deleted topic takes its share state");
    s.alter_group_configs("g", &[("share.auto.offset.reset".into(), Some("earliest".into())), ("x".into(), Some("1".into()))])
        .unwrap();
    s.alter_group_configs("g", &[("x".into(), None), ("share.auto.offset.reset".into(), Some("latest".into()))])
        .unwrap();
    assert_eq!(s.group_configs().unwrap(), vec![("g".into(), "share.auto.offset.reset".into(), "latest".into())]);
}

#[test]
fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&SqliteStore::open(&dir.path().join("c.db")).unwrap());
    txn_contract(&SqliteStore::open(&dir.path().join("t.db")).unwrap());
    let path = dir.path().join("k.db");
    let garbage = compaction_contract(&SqliteStore::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = c.prepare("SELECT key FROM garbage ORDER BY key").unwrap();
    let listed: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(listed, garbage);
    retention_contract(&SqliteStore::open(&dir.path().join("r.db")).unwrap());
    acl_contract(&SqliteStore::open(&dir.path().join("a.db")).unwrap());
    partitions_contract(&SqliteStore::open(&dir.path().join("p.db")).unwrap());
    topic_config_contract(&SqliteStore::open(&dir.path().join("tc.db")).unwrap());
    share_contract(&SqliteStore::open(&dir.path().join("s.db")).unwrap());
}

#[test]
fn postgres_store_keeps_the_contract() {
    let Some(db) = TestDb::create() else {
        eprintln!("{POSTGRES_URL_ENV} not set: PostgreSQL store contract skipped");
        return;
    };
    contract(&PgStore::open(&db.url).unwrap());
    let txn_db = TestDb::create().unwrap();
    txn_contract(&PgStore::open(&txn_db.url).unwrap());
    let compaction_db = TestDb::create().unwrap();
    let garbage = compaction_contract(&PgStore::open(&compaction_db.url).unwrap());
    let mut c = ::postgres::Client::connect(&compaction_db.url, ::postgres::NoTls).unwrap();
    let listed: Vec<String> = c.query("SELECT key FROM garbage ORDER BY key", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(listed, garbage);
    let retention_db = TestDb::create().unwrap();
    retention_contract(&PgStore::open(&retention_db.url).unwrap());
    let acl_db = TestDb::create().unwrap();
    acl_contract(&PgStore::open(&acl_db.url).unwrap());
    let partitions_db = TestDb::create().unwrap();
    partitions_contract(&PgStore::open(&partitions_db.url).unwrap());
    let config_db = TestDb::create().unwrap();
    topic_config_contract(&PgStore::open(&config_db.url).unwrap());
    let share_db = TestDb::create().unwrap();
    share_contract(&PgStore::open(&share_db.url).unwrap());
    // Opening again (a second replica, a restart) migrates nothing and keeps the data.
    let again = PgStore::open(&db.url).unwrap();
    assert_eq!(again.load("other").unwrap().cluster_id, "cluster-1");
}

#[test]
fn postgres_version_3_database_is_migrated_to_transactions_and_keeps_its_data() {
    let Some(db) = TestDb::create() else {
        eprintln!("{POSTGRES_URL_ENV} not set: PostgreSQL migration test skipped");
        return;
    };
    let s = PgStore::open(&db.url).unwrap();
    s.load("cluster-3").unwrap();
    let t = topic("t", 1);
    s.create_topic(&t).unwrap();
    drop(s);
    // What a version 3 binary left behind: no transaction tables.
    let mut c = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
    c.batch_execute("DROP TABLE transactions, open_txns, aborted_txns; UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        .unwrap();
    let s = PgStore::open(&db.url).unwrap();
    let snap = s.load("x").unwrap();
    assert_eq!((snap.cluster_id.as_str(), snap.topics.len()), ("cluster-3", 1));
    s.put_transaction("app", "{}").unwrap();
    assert_eq!(s.load("x").unwrap().transactions, vec![("app".into(), "{}".into())]);
    let version: String = c.query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[]).unwrap().get(0);
    assert_eq!(version, "8");
}

#[test]
fn postgres_lease_has_one_holder_and_fences_the_previous_one() {
    let Some(db) = TestDb::create() else {
        eprintln!("{POSTGRES_URL_ENV} not set: PostgreSQL lease test skipped");
        return;
    };
    let a = PgStore::open(&db.url).unwrap();
    let b = PgStore::open(&db.url).unwrap();
    a.load("c").unwrap();
    let t = topic("t", 1);
    let ttl_ms = 300;
    let ea = a.acquire_lease("a", "127.0.0.1:1", ttl_ms).unwrap().expect("a free lease is taken");
    assert_eq!(b.acquire_lease("b", "127.0.0.1:2", ttl_ms).unwrap(), None, "a live lease has one holder");
    assert!(a.renew_lease(ttl_ms).unwrap());
    a.create_topic(&t).unwrap();
    let holder = b.lease_holder().unwrap().unwrap();
    assert_eq!((holder.holder.as_str(), holder.address.as_str(), holder.epoch, holder.live), ("a", "127.0.0.1:1", ea, true));

    // a stops renewing; b takes over once the lease expired (by the database's clock).
    let deadline = Instant::now() + Duration::from_secs(10);
    let eb = loop {
        if let Some(e) = b.acquire_lease("b", "127.0.0.1:2", 10_000).unwrap() {
            break e;
        }
        assert!(Instant::now() < deadline, "the expired lease was never taken over");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(eb > ea);
    // a's writes are refused from now on, even though its view says partition 0 is at 0.
    let e = [extent(t.id, 0, 0, 1, "late", 0)];
    assert!(matches!(a.commit_object(&object("late"), &e, None, &[], &TxnEffects::default()), Err(StoreError::Fenced(_))));
    assert!(!a.renew_lease(ttl_ms).unwrap());
    b.commit_object(&object("o1"), &e, None, &[], &TxnEffects::default()).unwrap();
    assert_eq!(b.committed_extents("late").unwrap(), None);
    b.release_lease().unwrap();
    assert!(!b.lease_holder().unwrap().unwrap().live);
}

/// Another connection holding partition `p` of topic `t` locked (`FOR UPDATE`) until the
/// returned sender is dropped or sent to; then it commits and closes.
fn hold_partition_lock(url: &str, t: Uuid, p: i32) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
    let url = url.to_string();
    let holder = std::thread::spawn(move || {
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.query("SELECT 1 FROM partitions WHERE topic_id = $1 AND partition = $2 FOR UPDATE", &[&t.as_bytes().as_slice(), &p])
            .unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv_timeout(Duration::from_secs(5));
        tx.commit().unwrap();
    });
    locked.recv().unwrap();
    (release, holder)
}

#[test]
fn postgres_statement_past_the_timeout_fails_retriable_with_its_source() {
    let Some(db) = TestDb::create() else {
        eprintln!("{POSTGRES_URL_ENV} not set: PostgreSQL statement timeout test skipped");
        return;
    };
    let settings = StoreSettings { statement_timeout_ms: 300, ..StoreSettings::default() };
    let s = PgStore::open_with(&db.url, &settings).unwrap();
    s.load("c").unwrap();
    let t = topic("t", 1);
    s.create_topic(&t).unwrap();
    // The commit's partition is locked by another connection for up to 5 s.
    let (release, holder) = hold_partition_lock(&db.url, t.id, 0);
    let started = Instant::now();
    let e = s.commit_object(&object("o1"), &[extent(t.id, 0, 0, 1, "o1", 0)], None, &[], &TxnEffects::default()).unwrap_err();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "the write waited {waited:?}, past its statement timeout");
    assert!(matches!(e, StoreError::Retry { .. }) && e.is_retriable(), "{e:?}");
    let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<::postgres::Error>());
    assert_eq!(source.and_then(|s| s.code()), Some(&::postgres::error::SqlState::QUERY_CANCELED), "the database's error is the source");
    let text = crate::controller::ControllerError::from(e).to_string();
    assert!(text.contains("statement timeout"), "the answer carries the cause: {text}");
    release.send(()).unwrap();
    holder.join().unwrap();
    // Nothing was written, and the writer's connection goes on.
    assert_eq!(s.committed_extents("o1").unwrap(), None);
    s.commit_object(&object("o1"), &[extent(t.id, 0, 0, 1, "o1", 0)], None, &[], &TxnEffects::default()).unwrap();
}

#[test]
fn postgres_lease_renews_while_a_write_waits_for_a_lock() {
    let Some(db) = TestDb::create() else {
        eprintln!("{POSTGRES_URL_ENV} not set: PostgreSQL lease renewal test skipped");
        return;
    };
    let s = Arc::new(PgStore::open(&db.url).unwrap());
    s.load("c").unwrap();
    let t = topic("t", 1);
    let ttl_ms = 400;
    s.acquire_lease("a", "127.0.0.1:1", ttl_ms).unwrap().expect("a free lease is taken");
    s.create_topic(&t).unwrap();
    let (release, holder) = hold_partition_lock(&db.url, t.id, 0);
    let w = s.clone();
    let write =
        std::thread::spawn(move || w.commit_object(&object("o1"), &[extent(t.id, 0, 0, 1, "o1", 0)], None, &[], &TxnEffects::default()));
    // The write waits for the lock for three leases' time; the lease is renewed all along.
    let until = Instant::now() + Duration::from_millis(3 * ttl_ms);
    while Instant::now() < until {
        let started = Instant::now();
        assert!(s.renew_lease(ttl_ms).unwrap(), "the lease was lost while a write waited");
        assert!(started.elapsed() < Duration::from_millis(ttl_ms / 2), "a renewal waited {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(ttl_ms / 4));
    }
    assert!(!write.is_finished(), "the write still waits for the lock");
    release.send(()).unwrap();
    holder.join().unwrap();
    write.join().unwrap().expect("the write commits once the lock is free: the lease is still ours");
    assert!(s.committed_extents("o1").unwrap().is_some());
}

#[test]
fn sqlite_write_past_the_busy_timeout_fails_retriable_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let settings = StoreSettings { statement_timeout_ms: 200, ..StoreSettings::default() };
    let s = SqliteStore::open_with(&path, &settings).unwrap();
    s.load("c").unwrap();
    // Another connection holds the write lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let e = s.create_topic(&topic("t", 1)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, StoreError::Retry { .. }), "{e:?}");
    let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<rusqlite::Error>());
    assert_eq!(source.and_then(|s| s.sqlite_error_code()), Some(rusqlite::ErrorCode::DatabaseBusy), "SQLite's error is the source");
    assert!(e.report().contains("locked"), "{}", e.report());
    other.execute_batch("COMMIT").unwrap();
    s.create_topic(&topic("t", 1)).unwrap();
    // Reads go on meanwhile, through the reader pool.
    assert_eq!(s.wal_mark("w").unwrap(), 0);
}

#[test]
fn store_errors_are_sorted_and_answer_with_their_causes() {
    let retry = StoreError::retry(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer"));
    assert!(retry.is_retriable());
    let text = crate::controller::ControllerError::from(retry).to_string();
    assert!(text.contains("reset by peer") && !text.contains("internal"), "{text}");
    let bug = StoreError::internal("PostgreSQL", Some("syntax error at or near \"SELEC\"".into()));
    assert!(!bug.is_retriable());
    let text = crate::api::groups::GroupError::from(bug).to_string();
    assert!(text.contains("internal") && text.contains("syntax error"), "{text}");
}

/// Client quotas: set, replaced, removed (a missing one too), all in one transaction per call.
fn quota_contract(s: &dyn MetadataStore) {
    assert!(s.client_quotas().unwrap().is_empty());
    let set = |e: &str, k: &str, v: Option<f64>| (e.to_string(), k.to_string(), v);
    s.alter_client_quotas(&[
        set("user/alice", "producer_byte_rate", Some(1024.0)),
        set("user/alice", "request_percentage", Some(12.5)),
        set("client-id/<default>", "consumer_byte_rate", Some(2048.0)),
    ])
    .unwrap();
    s.alter_client_quotas(&[
        set("user/alice", "producer_byte_rate", Some(4096.0)),
        set("user/alice", "request_percentage", None),
        set("user/nobody", "request_percentage", None),
    ])
    .unwrap();
    assert_eq!(
        s.client_quotas().unwrap(),
        vec![
            ("client-id/<default>".to_string(), "consumer_byte_rate".to_string(), 2048.0),
            ("user/alice".to_string(), "producer_byte_rate".to_string(), 4096.0),
        ]
    );
}

#[test]
fn sqlite_store_keeps_client_quotas() {
    let dir = tempfile::tempdir().unwrap();
    quota_contract(&SqliteStore::open(&dir.path().join("q.db")).unwrap());
}

#[test]
fn postgres_store_keeps_client_quotas() {
    let Some(db) = TestDb::create() else {
        eprintln!("{POSTGRES_URL_ENV} not set: PostgreSQL client quota contract skipped");
        return;
    };
    quota_contract(&PgStore::open(&db.url).unwrap());
}
