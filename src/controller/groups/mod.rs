//! Consumer groups: the coordinator every agent forwards group requests to, so members
//! connected to different agents form one group.
//!
//! - [`classic`]: the JoinGroup/SyncGroup/Heartbeat/LeaveGroup state machine of one group.
//! - [`consumer`]: KIP-848 groups (ConsumerGroupHeartbeat) with server-side assignment by the
//!   [`assignor`]s.
//! - [`share`]: KIP-932 share groups' membership; [`share_partition`]: which records of a
//!   partition a share group delivered, to whom and how often; [`shares`]: the coordinator's
//!   share calls, with that state durable in the store, and the GROUP config resource.
//! - [`streams`]: KIP-1071 groups (StreamsGroupHeartbeat): Kafka Streams topologies, their
//!   internal topics and server-side task assignment.
//! - this file: the [`GroupCoordinator`] owning every group, its committed offsets (written to
//!   the metadata store before they are visible), limits, and one timer task per group with
//!   live members that applies session and rebalance deadlines.
//!
//! Membership lives in memory only: after a restart every group is Empty with its committed
//! offsets (share groups with their share-partitions), and members rejoin (their old member ids are unknown, so stale members are fenced).
//! Time is tokio's clock (deadlines) and the injected [`Clock`] (commit timestamps); member ids
//! use the injected [`Entropy`].
//!
//! Must not touch: Kafka request/response types (the protocol layer translates). The one
//! exception is the consumer protocol's subscription payload, which the coordinator reads
//! to know which topics a classic consumer group subscribes to (OffsetDelete), as Kafka does.

pub mod assignor;
pub mod classic;
pub mod consumer;
pub mod share;
pub mod share_partition;
pub mod shares;
pub mod streams;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::store::{GroupOffsetRecord, MetadataStore, StoreError};
use crate::api::groups::{
    ClientInfo, CommittedOffset, GroupDescription, GroupError, GroupListing, JoinRequest, JoinResponse, JoinedMember, MemberSummary,
    OffsetCommitRequest, SyncRequest, SyncResponse, TopicPartition,
};
use crate::api::{PartitionOffsets, TopicMeta};
use crate::clock::{Clock, Entropy};
use classic::{ClassicGroup, ClassicState, Reply};
use consumer::ConsumerGroup;
use streams::StreamsGroup;

/// Limits and timings of the coordinator: the `[groups]` section of proxy.toml.
pub use crate::config::GroupsConfig as GroupSettings;

impl From<StoreError> for GroupError {
    fn from(e: StoreError) -> Self {
        GroupError::Unavailable(e.unavailable_text())
    }
}

/// Topics as the coordinator needs them (existence checks, KIP-848 assignment).
pub trait TopicLookup: Send + Sync + 'static {
    fn by_name(&self, name: &str) -> Option<Arc<TopicMeta>>;
    fn by_id(&self, id: Uuid) -> Option<Arc<TopicMeta>>;
    /// Every topic's name, the internal ones too, as Kafka's coordinator matches a regex
    /// subscription (franz-go's Test848RegexBrokerResolves checks it against Kafka 4.4).
    fn names(&self) -> Vec<String>;
    /// A partition's log start and end (share groups acquire records below the end).
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Option<PartitionOffsets>;
}

enum Kind {
    Classic(ClassicGroup),
    Consumer(ConsumerGroup),
    Share(share::ShareGroup),
    Streams(StreamsGroup),
}

/// The protocol a joining member speaks: what a new (or empty) group becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Classic,
    Consumer,
    Share,
    Streams,
}

impl Kind {
    fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Classic => Kind::Classic(ClassicGroup::new()),
            Protocol::Consumer => Kind::Consumer(ConsumerGroup::new()),
            Protocol::Share => Kind::Share(share::ShareGroup::new()),
            Protocol::Streams => Kind::Streams(StreamsGroup::new()),
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            Kind::Classic(_) => Protocol::Classic,
            Kind::Consumer(_) => Protocol::Consumer,
            Kind::Share(_) => Protocol::Share,
            Kind::Streams(_) => Protocol::Streams,
        }
    }
}

struct Entry {
    kind: Kind,
    offsets: BTreeMap<TopicPartition, CommittedOffset>,
    notify: Arc<Notify>,
    timer_running: bool,
    /// When offset expiry first saw the group without members (since then, as far as this
    /// coordinator knows): its offsets expire `offsets_retention_ms` after this or after their
    /// commit, whichever is later. Cleared when a member joins.
    empty_since_ms: Option<i64>,
}

impl Entry {
    fn new(kind: Kind) -> Self {
        Self { kind, offsets: BTreeMap::new(), notify: Arc::new(Notify::new()), timer_running: false, empty_since_ms: None }
    }

    fn has_members(&self) -> bool {
        match &self.kind {
            Kind::Classic(g) => !g.is_empty(),
            Kind::Consumer(g) => !g.is_empty(),
            Kind::Share(g) => !g.is_empty(),
            Kind::Streams(g) => !g.is_empty(),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.kind {
            Kind::Classic(g) => g.next_deadline(),
            Kind::Consumer(g) => g.next_deadline(),
            Kind::Share(g) => g.next_deadline(),
            Kind::Streams(g) => g.next_deadline(),
        }
    }

    /// A group with no members and no offsets is forgotten (Kafka's Dead); a share group stays
    /// until DeleteGroups (its share-partitions are its offsets).
    fn is_dead(&self) -> bool {
        !matches!(self.kind, Kind::Share(_)) && !self.has_members() && self.offsets.is_empty() && self.next_deadline().is_none()
    }
}

/// Every group and its offsets. Methods marked blocking write to the store.
pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Entry>>,
    /// Set by [`GroupCoordinator::shutdown`]: joins and syncs are refused from then on.
    closing: std::sync::atomic::AtomicBool,
    /// Serializes offset writes, so the store and memory see them in the same order.
    offsets_write: Mutex<()>,
    store: Arc<dyn MetadataStore>,
    topics: Arc<dyn TopicLookup>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    settings: GroupSettings,
    /// Each share group's share-partitions (see [`shares`]), and how many there are in all.
    shares: Mutex<HashMap<String, shares::GroupPartitions>>,
    share_partitions_held: std::sync::atomic::AtomicUsize,
    /// Configs of the GROUP resource, by group (see [`shares`]).
    group_configs: Mutex<HashMap<String, BTreeMap<String, String>>>,
    me: Weak<GroupCoordinator>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupCoordinator {
    /// Loads committed offsets from the store (blocking).
    pub fn open(
        store: Arc<dyn MetadataStore>,
        topics: Arc<dyn TopicLookup>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        settings: GroupSettings,
    ) -> Result<Arc<Self>, StoreError> {
        let mut groups: HashMap<String, Entry> = HashMap::new();
        for r in store.load_group_offsets()? {
            groups.entry(r.group_id.clone()).or_insert_with(|| Entry::new(Kind::Classic(ClassicGroup::new()))).offsets.insert(
                (r.topic, r.partition),
                CommittedOffset { offset: r.offset, leader_epoch: r.leader_epoch, metadata: r.metadata, commit_ms: r.commit_ms },
            );
        }
        let coordinator = Arc::new_cyclic(|me| Self {
            groups: Mutex::new(groups),
            closing: std::sync::atomic::AtomicBool::new(false),
            offsets_write: Mutex::new(()),
            store,
            topics,
            clock,
            entropy,
            settings,
            shares: Mutex::new(HashMap::new()),
            share_partitions_held: std::sync::atomic::AtomicUsize::new(0),
            group_configs: Mutex::new(HashMap::new()),
            me: me.clone(),
        });
        coordinator.load_shares()?;
        Ok(coordinator)
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.groups)
    }

    /// Makes sure the group's timer task runs and sees the latest deadlines.
    fn wake(&self, group_id: &str, entry: &mut Entry) {
        if entry.timer_running {
            entry.notify.notify_one();
            return;
        }
        if entry.next_deadline().is_none() {
            return;
        }
        entry.timer_running = true;
        let me = self.me.clone();
        let id = group_id.to_string();
        let notify = entry.notify.clone();
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(c) = me.upgrade() else { return };
                    let mut groups = c.groups();
                    let Some(e) = groups.get_mut(&id) else { return };
                    match e.next_deadline() {
                        Some(d) => d,
                        None => {
                            e.timer_running = false;
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = notify.notified() => continue,
                }
                let Some(c) = me.upgrade() else { return };
                c.tick(&id);
            }
        });
    }

    /// Applies the deadlines that passed in one group.
    fn tick(&self, group_id: &str) {
        let now = Instant::now();
        let mut groups = self.groups();
        let Some(e) = groups.get_mut(group_id) else { return };
        let mut expired_share_members = Vec::new();
        match &mut e.kind {
            Kind::Classic(g) => g.on_time(now, &self.settings),
            Kind::Consumer(g) => g.on_time(now, &*self.topics),
            Kind::Share(g) => expired_share_members = g.on_time(now),
            Kind::Streams(g) => g.on_time(now, &*self.topics, &self.settings),
        }
        if e.is_dead() {
            groups.remove(group_id);
        }
        drop(groups);
        // Their records are released off the timer task: the group's share-partitions may be
        // held over a store write by a ShareFetch.
        if !expired_share_members.is_empty() {
            let (me, id) = (self.me.clone(), group_id.to_string());
            tokio::task::spawn_blocking(move || {
                if let Some(c) = me.upgrade() {
                    for member in expired_share_members {
                        c.release_member(&id, &member);
                    }
                }
            });
        }
    }

    fn check_group_id(group_id: &str) -> Result<(), GroupError> {
        if group_id.is_empty() { Err(GroupError::InvalidGroupId) } else { Ok(()) }
    }

    /// Gets or creates a group for a new member; `Kind` decides what an empty group becomes.
    fn entry_for_join<'a>(
        &self,
        groups: &'a mut HashMap<String, Entry>,
        group_id: &str,
        protocol: Protocol,
    ) -> Result<&'a mut Entry, GroupError> {
        if !groups.contains_key(group_id) {
            if groups.len() >= self.settings.max_groups {
                return Err(GroupError::TooManyGroups);
            }
            groups.insert(group_id.to_string(), Entry::new(Kind::new(protocol)));
        }
        let e = groups.get_mut(group_id).ok_or_else(|| GroupError::Unavailable("group vanished".into()))?;
        e.empty_since_ms = None;
        // An empty group changes protocol freely (its offsets stay); but a share group keeps its
        // type (its share-partitions are its offsets) until deleted, and only a group without
        // offsets becomes one, as Kafka's group types never mix.
        let share_involved = matches!(e.kind, Kind::Share(_)) || protocol == Protocol::Share;
        if e.kind.protocol() != protocol && !e.has_members() && (!share_involved || (protocol == Protocol::Share && e.offsets.is_empty())) {
            e.kind = Kind::new(protocol);
        }
        Ok(e)
    }

    /// Answers every waiting JoinGroup and SyncGroup with NOT_COORDINATOR and refuses new
    /// ones, so a graceful shutdown does not wait for rebalances (clients rejoin after it).
    pub fn shutdown(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        for e in self.groups().values_mut() {
            if let Kind::Classic(g) = &mut e.kind {
                g.abort_waiters(GroupError::NotCoordinator);
            }
        }
    }

    fn closing(&self) -> Result<(), GroupError> {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) { Err(GroupError::NotCoordinator) } else { Ok(()) }
    }

    /// JoinGroup: waits until the join phase ends (or answers at once).
    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let reply = {
            let fail = |e| JoinResponse::error(req.member_id.clone(), e);
            if let Err(e) = Self::check_group_id(&req.group_id) {
                return fail(e);
            }
            if req.session_timeout_ms < self.settings.min_session_timeout_ms
                || req.session_timeout_ms > self.settings.max_session_timeout_ms
            {
                return fail(GroupError::InvalidSessionTimeout);
            }
            let mut groups = self.groups();
            // Checked under the lock, so shutdown() sees every waiter registered before it.
            if let Err(e) = self.closing() {
                return fail(e);
            }
            if !req.member_id.is_empty() && !groups.contains_key(&req.group_id) {
                return fail(GroupError::UnknownMemberId);
            }
            let group_id = req.group_id.clone();
            let e = match self.entry_for_join(&mut groups, &group_id, Protocol::Classic) {
                Ok(e) => e,
                Err(err) => return fail(err),
            };
            let Kind::Classic(g) = &mut e.kind else {
                return fail(GroupError::InconsistentGroupProtocol);
            };
            let reply = g.join(Instant::now(), &self.settings, self.entropy.uuid(), req);
            self.wake(&group_id, e);
            if e.is_dead() {
                groups.remove(&group_id);
            }
            reply
        };
        match reply {
            Reply::Now(r) => r,
            Reply::Wait(rx) => {
                rx.await.unwrap_or_else(|_| JoinResponse::error(String::new(), GroupError::Unavailable("group removed".into())))
            }
        }
    }

    /// SyncGroup: the leader's call distributes the assignments; the others wait for it.
    pub async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, GroupError> {
        let reply = {
            Self::check_group_id(&req.group_id)?;
            let mut groups = self.groups();
            self.closing()?;
            let e = groups.get_mut(&req.group_id).ok_or(GroupError::UnknownMemberId)?;
            let Kind::Classic(g) = &mut e.kind else { return Err(GroupError::UnknownMemberId) };
            let group_id = req.group_id.clone();
            let reply = g.sync(Instant::now(), req);
            self.wake(&group_id, e);
            reply
        };
        match reply {
            Reply::Now(r) => r,
            Reply::Wait(rx) => rx.await.unwrap_or_else(|_| Err(GroupError::Unavailable("group removed".into()))),
        }
    }

    pub fn heartbeat(&self, group_id: &str, member_id: &str, instance_id: Option<&str>, generation: i32) -> Result<(), GroupError> {
        Self::check_group_id(group_id)?;
        let mut groups = self.groups();
        let e = groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
        let Kind::Classic(g) = &mut e.kind else { return Err(GroupError::UnknownMemberId) };
        let r = g.heartbeat(Instant::now(), member_id, instance_id, generation);
        self.wake(group_id, e);
        r
    }

    /// LeaveGroup of several member identities (member id, instance id); one result each.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        Self::check_group_id(group_id)?;
        let mut groups = self.groups();
        let e = groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
        let Kind::Classic(g) = &mut e.kind else { return Err(GroupError::UnknownMemberId) };
        let now = Instant::now();
        let results = members.iter().map(|(m, i)| g.leave(now, m, i.as_deref())).collect();
        self.wake(group_id, e);
        if e.is_dead() {
            groups.remove(group_id);
        }
        Ok(results)
    }

    /// Blocking. OffsetCommit: `Err` is a group-level error (for every partition); otherwise
    /// one result per offset, in order. Offsets are in the store before they are visible.
    pub fn commit_offsets(&self, req: &OffsetCommitRequest) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        Self::check_group_id(&req.group_id)?;
        let _w = lock(&self.offsets_write);
        {
            let mut groups = self.groups();
            let now = Instant::now();
            match groups.get_mut(&req.group_id) {
                None if req.generation_id_or_member_epoch < 0 => {
                    // A "simple" group: a consumer without group management, or an admin client.
                    if groups.len() >= self.settings.max_groups {
                        return Err(GroupError::TooManyGroups);
                    }
                    groups.insert(req.group_id.clone(), Entry::new(Kind::Classic(ClassicGroup::new())));
                }
                None if req.api_version >= 9 => return Err(GroupError::GroupIdNotFound),
                None => return Err(GroupError::IllegalGeneration),
                Some(e) => match &mut e.kind {
                    Kind::Share(_) => return Err(GroupError::GroupIdNotFound),
                    Kind::Classic(g) => {
                        g.validate_offset_commit(now, &req.member_id, req.group_instance_id.as_deref(), req.generation_id_or_member_epoch)?
                    }
                    Kind::Consumer(g) => {
                        let partitions: Vec<(Uuid, i32)> = req
                            .offsets
                            .iter()
                            .map(|o| (self.topics.by_name(&o.topic).map_or(Uuid::nil(), |t| t.id), o.partition))
                            .collect();
                        g.validate_offset_commit(&req.member_id, req.generation_id_or_member_epoch, req.api_version, Some(&partitions))?
                    }
                    Kind::Streams(g) => {
                        let partitions: Vec<(String, i32)> = req.offsets.iter().map(|o| (o.topic.clone(), o.partition)).collect();
                        g.validate_offset_commit(&req.member_id, req.generation_id_or_member_epoch, Some(&partitions))?
                    }
                },
            }
        }
        let commit_ms = self.clock.now_ms();
        let mut results = Vec::with_capacity(req.offsets.len());
        let mut records = Vec::new();
        for o in &req.offsets {
            let r = if o.metadata.len() > self.settings.max_offset_metadata_bytes {
                Err(GroupError::OffsetMetadataTooLarge)
            } else if self.topics.by_name(&o.topic).is_none_or(|t| o.partition < 0 || o.partition >= t.partitions) {
                Err(GroupError::UnknownTopicOrPartition)
            } else {
                records.push(GroupOffsetRecord {
                    group_id: req.group_id.clone(),
                    topic: o.topic.clone(),
                    partition: o.partition,
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata.clone(),
                    commit_ms,
                });
                Ok(())
            };
            results.push(r);
        }
        if records.is_empty() {
            return Ok(results);
        }
        self.store.commit_group_offsets(&records)?;
        let mut groups = self.groups();
        let e = groups.entry(req.group_id.clone()).or_insert_with(|| Entry::new(Kind::Classic(ClassicGroup::new())));
        for r in records {
            e.offsets.insert(
                (r.topic, r.partition),
                CommittedOffset { offset: r.offset, leader_epoch: r.leader_epoch, metadata: r.metadata, commit_ms },
            );
        }
        Ok(results)
    }

    /// TxnOffsetCommit's member check (KIP-447): a request naming a generation or member must
    /// come from a current member, as for OffsetCommit; one naming neither (clients before
    /// TxnOffsetCommit v3) is not checked, as in Kafka.
    pub fn validate_txn_offset_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        Self::check_group_id(group_id)?;
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            return Ok(());
        }
        let mut groups = self.groups();
        let e = groups.get_mut(group_id).ok_or(GroupError::IllegalGeneration)?;
        match &mut e.kind {
            Kind::Classic(g) => g.validate_offset_commit(Instant::now(), member_id, instance_id, generation),
            Kind::Consumer(g) => g.validate_offset_commit(member_id, generation, 9, None),
            Kind::Share(_) => Err(GroupError::GroupIdNotFound),
            Kind::Streams(g) => g.validate_offset_commit(member_id, generation, None),
        }
    }

    /// Blocking. Offsets a committed transaction makes visible: `write` stores them (in the
    /// store transaction that commits the markers), then memory follows, under the same lock
    /// as OffsetCommit so store and memory see every commit in the same order.
    pub fn install_txn_offsets<E>(&self, records: &[GroupOffsetRecord], write: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let _w = lock(&self.offsets_write);
        write()?;
        let mut groups = self.groups();
        for r in records {
            let e = groups.entry(r.group_id.clone()).or_insert_with(|| Entry::new(Kind::Classic(ClassicGroup::new())));
            e.offsets.insert(
                (r.topic.clone(), r.partition),
                CommittedOffset { offset: r.offset, leader_epoch: r.leader_epoch, metadata: r.metadata.clone(), commit_ms: r.commit_ms },
            );
        }
        Ok(())
    }

    /// OffsetFetch: the committed offsets of `partitions` (every committed one when `None`).
    /// `member` (OffsetFetch v9: member id and epoch) is checked for KIP-848 groups.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
        member: Option<(&str, i32)>,
    ) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, GroupError> {
        Self::check_group_id(group_id)?;
        let groups = self.groups();
        let Some(e) = groups.get(group_id) else {
            return Ok(partitions.map(|ps| ps.iter().map(|p| (p.clone(), None)).collect()).unwrap_or_default());
        };
        match (&e.kind, member) {
            (Kind::Consumer(g), Some((member_id, epoch))) => g.validate_offset_fetch(member_id, epoch)?,
            (Kind::Streams(g), Some((member_id, epoch))) => g.validate_offset_fetch(member_id, epoch)?,
            _ => {}
        }
        Ok(match partitions {
            None => e.offsets.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
            Some(ps) => ps.iter().map(|p| (p.clone(), e.offsets.get(p).cloned())).collect(),
        })
    }

    /// Blocking. OffsetDelete: partitions of topics the group still subscribes to are refused.
    pub fn delete_offsets(&self, group_id: &str, partitions: &[TopicPartition]) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        Self::check_group_id(group_id)?;
        let _w = lock(&self.offsets_write);
        let subscribed: BTreeSet<String> = {
            let groups = self.groups();
            let e = groups.get(group_id).ok_or(GroupError::GroupIdNotFound)?;
            match &e.kind {
                Kind::Classic(g) if g.is_empty() => BTreeSet::new(),
                Kind::Classic(g) if g.protocol_type.as_deref() == Some("consumer") => {
                    g.member_metadata().iter().flat_map(subscription_topics).collect()
                }
                Kind::Classic(_) => return Err(GroupError::NonEmptyGroup),
                Kind::Consumer(g) => g.subscribed_topics(),
                Kind::Share(_) => return Err(GroupError::GroupIdNotFound),
                Kind::Streams(g) => g.subscribed_topics(),
            }
        };
        let results: Vec<Result<(), GroupError>> = partitions
            .iter()
            .map(|(t, _)| if subscribed.contains(t) { Err(GroupError::GroupSubscribedToTopic) } else { Ok(()) })
            .collect();
        let delete: Vec<TopicPartition> = partitions.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(p, _)| p.clone()).collect();
        if !delete.is_empty() {
            self.store.delete_group_offsets(group_id, Some(&delete))?;
            let mut groups = self.groups();
            if let Some(e) = groups.get_mut(group_id) {
                for p in &delete {
                    e.offsets.remove(p);
                }
            }
        }
        Ok(results)
    }

    /// Blocking. DeleteGroups: only groups without members; their offsets go too.
    pub fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        Self::check_group_id(group_id)?;
        let _w = lock(&self.offsets_write);
        {
            let groups = self.groups();
            let e = groups.get(group_id).ok_or(GroupError::GroupIdNotFound)?;
            if e.has_members() {
                return Err(GroupError::NonEmptyGroup);
            }
        }
        self.store.delete_group_offsets(group_id, None)?;
        self.delete_share_state(group_id)?;
        let mut groups = self.groups();
        if groups.get(group_id).is_some_and(|e| !e.has_members()) {
            groups.remove(group_id);
        } else if let Some(e) = groups.get_mut(group_id) {
            e.offsets.clear();
        }
        Ok(())
    }

    /// The topic `name` (`id`) was deleted: every group forgets its offsets and share-partitions
    /// (the store dropped them in the topic's deletion).
    pub fn forget_topic(&self, name: &str, id: Uuid) {
        self.forget_share_topic(id);
        let _w = lock(&self.offsets_write);
        let mut groups = self.groups();
        for e in groups.values_mut() {
            e.offsets.retain(|(t, _), _| t != name);
        }
        groups.retain(|_, e| !e.is_dead());
    }

    /// Blocking. Kafka's `offsets.retention.minutes`: drops the committed offsets of groups
    /// without members that are older than `offsets_retention_ms`, counted from their commit or
    /// from when the group was first seen empty, whichever is later (so a restart only ever
    /// keeps offsets longer). Returns how many expired.
    pub fn expire_offsets(&self, now_ms: i64) -> Result<u64, StoreError> {
        let retention_ms = i64::try_from(self.settings.offsets_retention_ms).unwrap_or(i64::MAX);
        let _w = lock(&self.offsets_write);
        let expired: Vec<(String, Vec<TopicPartition>)> = {
            let mut groups = self.groups();
            groups
                .iter_mut()
                .filter_map(|(id, e)| {
                    if e.has_members() {
                        e.empty_since_ms = None;
                        return None;
                    }
                    let since = *e.empty_since_ms.get_or_insert(now_ms);
                    let old: Vec<TopicPartition> = e
                        .offsets
                        .iter()
                        .filter(|(_, o)| o.commit_ms.max(since).saturating_add(retention_ms) <= now_ms)
                        .map(|(p, _)| p.clone())
                        .collect();
                    (!old.is_empty()).then(|| (id.clone(), old))
                })
                .collect()
        };
        let mut count = 0u64;
        for (group_id, partitions) in expired {
            self.store.delete_group_offsets(&group_id, Some(&partitions))?;
            let mut groups = self.groups();
            if let Some(e) = groups.get_mut(&group_id) {
                for p in &partitions {
                    e.offsets.remove(p);
                }
                if e.is_dead() {
                    groups.remove(&group_id);
                }
            }
            count += partitions.len() as u64;
        }
        Ok(count)
    }

    /// ListGroups, filtered by state and type names (case-insensitive; empty: all).
    pub fn list_groups(&self, states: &[String], types: &[String]) -> Vec<GroupListing> {
        let groups = self.groups();
        let mut out: Vec<GroupListing> = groups
            .iter()
            .map(|(id, e)| match &e.kind {
                Kind::Classic(g) => GroupListing {
                    group_id: id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state.name().to_string(),
                    group_type: "classic".into(),
                },
                Kind::Consumer(g) => GroupListing {
                    group_id: id.clone(),
                    protocol_type: "consumer".into(),
                    state: g.state_name().to_string(),
                    group_type: "consumer".into(),
                },
                Kind::Share(g) => GroupListing {
                    group_id: id.clone(),
                    protocol_type: "share".into(),
                    state: g.state_name().to_string(),
                    group_type: "share".into(),
                },
                Kind::Streams(g) => GroupListing {
                    group_id: id.clone(),
                    protocol_type: "streams".into(),
                    state: g.state_name().to_string(),
                    group_type: "streams".into(),
                },
            })
            .filter(|l| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(&l.state)))
            .filter(|l| types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case(&l.group_type)))
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// DescribeGroups of a classic group; `GroupIdNotFound` for unknown or KIP-848 groups.
    pub fn describe_group(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        Self::check_group_id(group_id)?;
        let groups = self.groups();
        let Some(Entry { kind: Kind::Classic(g), .. }) = groups.get(group_id) else {
            return Err(GroupError::GroupIdNotFound);
        };
        Ok(GroupDescription {
            state: g.state.name().to_string(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol_data: if g.state == ClassicState::Stable { g.protocol_name.clone().unwrap_or_default() } else { String::new() },
            members: g.members(),
        })
    }

    /// Every committed offset: (group, topic, partition, offset), sorted.
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let groups = self.groups();
        let mut out: Vec<_> = groups
            .iter()
            .flat_map(|(g, e)| e.offsets.iter().map(move |((t, p), o)| (g.clone(), t.clone(), *p, o.offset)))
            .collect();
        out.sort();
        out
    }

    /// KIP-848 ConsumerGroupHeartbeat.
    pub fn consumer_heartbeat(
        &self,
        req: crate::api::groups::consumer::HeartbeatRequest,
    ) -> Result<crate::api::groups::consumer::HeartbeatResponse, GroupError> {
        Self::check_group_id(&req.group_id)?;
        let mut groups = self.groups();
        let group_id = req.group_id.clone();
        if req.member_epoch != 0 && !groups.contains_key(&group_id) {
            return Err(GroupError::UnknownMemberId);
        }
        let e = self.entry_for_join(&mut groups, &group_id, Protocol::Consumer)?;
        let Kind::Consumer(g) = &mut e.kind else { return Err(GroupError::GroupIdNotFound) };
        let r = g.heartbeat(Instant::now(), &self.settings, &*self.topics, &*self.entropy, req);
        self.wake(&group_id, e);
        if e.is_dead() {
            groups.remove(&group_id);
        }
        r
    }

    /// KIP-848 ConsumerGroupDescribe; `GroupIdNotFound` for unknown or classic groups.
    pub fn consumer_describe(&self, group_id: &str) -> Result<crate::api::groups::consumer::GroupDescription, GroupError> {
        Self::check_group_id(group_id)?;
        let groups = self.groups();
        match groups.get(group_id) {
            Some(Entry { kind: Kind::Consumer(g), .. }) => Ok(g.describe(&*self.topics)),
            _ => Err(GroupError::GroupIdNotFound),
        }
    }
}

/// An assignment with each topic's name, as the describe calls answer it (an unknown id: "").
fn named_assignment(a: &crate::api::groups::Assignment, topics: &dyn TopicLookup) -> Vec<(Uuid, String, Vec<i32>)> {
    a.iter()
        .map(|(t, ps)| (*t, topics.by_id(*t).map(|m| m.name.clone()).unwrap_or_default(), ps.iter().copied().collect()))
        .collect()
}

impl GroupCoordinator {
    /// KIP-1071 StreamsGroupHeartbeat. A group of another protocol with members answers
    /// GROUP_ID_NOT_FOUND, as Kafka's coordinator ("not a streams group").
    pub fn streams_heartbeat(
        &self,
        req: crate::api::groups::streams::HeartbeatRequest,
    ) -> Result<crate::api::groups::streams::HeartbeatResponse, GroupError> {
        Self::check_group_id(&req.group_id)?;
        let mut groups = self.groups();
        self.closing()?;
        let group_id = req.group_id.clone();
        if req.member_epoch != 0 && !groups.contains_key(&group_id) {
            return Err(GroupError::UnknownMemberId);
        }
        let e = self.entry_for_join(&mut groups, &group_id, Protocol::Streams)?;
        let Kind::Streams(g) = &mut e.kind else { return Err(GroupError::GroupIdNotFound) };
        let r = g.heartbeat(Instant::now(), &self.settings, &*self.topics, req);
        self.wake(&group_id, e);
        if e.is_dead() {
            groups.remove(&group_id);
        }
        r
    }

    /// KIP-1071 StreamsGroupDescribe; `GroupIdNotFound` for unknown groups and other protocols'.
    pub fn streams_describe(&self, group_id: &str) -> Result<crate::api::groups::streams::GroupDescription, GroupError> {
        Self::check_group_id(group_id)?;
        match self.groups().get(group_id) {
            Some(Entry { kind: Kind::Streams(g), .. }) => Ok(g.describe()),
            _ => Err(GroupError::GroupIdNotFound),
        }
    }
}

/// Topics named in a consumer protocol subscription (the JoinGroup metadata of protocol type
/// "consumer"); nothing when it does not decode.
fn subscription_topics(metadata: &Bytes) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3))
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
