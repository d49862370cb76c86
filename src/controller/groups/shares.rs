//! The coordinator's share-group calls (KIP-932): membership through [`super::share`], and
//! the delivery state of every share-partition ([`SharePartition`]), durable in the metadata
//! store; plus the group configs (the GROUP config resource) that tune them.
//!
//! Each share group's partitions sit behind one mutex of their own, held while the store
//! writes their new state: an acknowledgement or acquisition is visible only once it is
//! durable, and groups do not wait on each other. A call works on copies and installs them only
//! after the write succeeded, so a failed write changes nothing.
//!
//! Locks: outside start-up, a group's partitions are never taken under the coordinator's
//! `groups` lock (a leaving member's records are released after it, an expired member's on the
//! blocking pool), and the map of groups (`shares`) is only ever held alone.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use uuid::Uuid;

use super::share::{LEAVE_EPOCH, ShareGroup};
use super::share_partition::{AckError, Durable, Limits, SharePartition};
use super::{Entry, GroupCoordinator, Kind, lock};
use crate::api::groups::GroupError;
use crate::api::share::{
    GroupDescription, HeartbeatRequest, HeartbeatResponse, PartitionAnswer, RecordsAnswer, RecordsRequest, StartOffset,
};
use crate::controller::store::{SharePartitionRecord, StoreError};

/// One share group's partitions.
pub(super) type GroupPartitions = Arc<Mutex<BTreeMap<(Uuid, i32), SharePartition>>>;

/// Group configs a GROUP resource takes, with Kafka's bounds (`GroupConfig`): name, min, max.
const INT_CONFIGS: &[(&str, i64, i64)] = &[
    ("share.session.timeout.ms", 45_000, 60_000),
    ("share.heartbeat.interval.ms", 5_000, 15_000),
    ("share.record.lock.duration.ms", 15_000, 60_000),
    ("share.delivery.count.limit", 2, 10),
];
pub const AUTO_OFFSET_RESET: &str = "share.auto.offset.reset";
pub const ISOLATION_LEVEL: &str = "share.isolation.level";
/// Group configs one group may hold.
const GROUP_CONFIGS_MAX: usize = 16;

/// Where a new share-partition starts (`share.auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    Earliest,
    Latest,
}

/// Checks one group config; `Err` is Kafka's INVALID_CONFIG text.
pub fn validate_group_config(name: &str, value: &str) -> Result<(), String> {
    if let Some((_, lo, hi)) = INT_CONFIGS.iter().find(|(n, _, _)| *n == name) {
        let v: i64 = value.parse().map_err(|_| format!("{name} must be an integer, not {value:?}"))?;
        if v < *lo || v > *hi {
            return Err(format!("{name} must be between {lo} and {hi}"));
        }
        return Ok(());
    }
    match name {
        AUTO_OFFSET_RESET if value == "earliest" || value == "latest" => Ok(()),
        AUTO_OFFSET_RESET => Err(format!("{name} must be earliest or latest (by_duration is not supported here)")),
        ISOLATION_LEVEL if value == "read_uncommitted" => Ok(()),
        ISOLATION_LEVEL => Err(format!("{name}: only read_uncommitted is supported by share groups here")),
        _ => Err(format!("unknown or unsupported group config {name}")),
    }
}

/// Every group config name this coordinator takes.
pub fn group_config_names() -> Vec<&'static str> {
    INT_CONFIGS.iter().map(|(n, _, _)| *n).chain([AUTO_OFFSET_RESET, ISOLATION_LEVEL]).collect()
}

fn no_state(e: StoreError) -> GroupError {
    GroupError::Unavailable(e.unavailable_text())
}

impl GroupCoordinator {
    /// Loads share-partitions and group configs (at start-up, blocking): every group with
    /// share state becomes an (empty) share group.
    pub(super) fn load_shares(&self) -> Result<(), StoreError> {
        let mut configs = lock(&self.group_configs);
        for (group, name, value) in self.store.group_configs()? {
            configs.entry(group).or_default().insert(name, value);
        }
        drop(configs);
        let mut groups = self.groups();
        let mut shares = lock(&self.shares);
        for r in self.store.load_share_partitions()? {
            let durable: Durable = serde_json::from_str(&r.body)
                .map_err(|e| StoreError::corrupt(format!("share-partition state of group {}", r.group_id), Some(e.into())))?;
            let limits = self.share_limits(&r.group_id);
            let p = SharePartition::from_durable(&durable, limits.delivery_count_limit)
                .map_err(|e| StoreError::corrupt(format!("share-partition state of group {}: {e}", r.group_id), None))?;
            lock(shares.entry(r.group_id.clone()).or_default()).insert((r.topic_id, r.partition), p);
            self.share_partitions_held.fetch_add(1, Ordering::Relaxed);
            groups.entry(r.group_id).or_insert_with(|| Entry::new(Kind::Share(ShareGroup::new())));
        }
        Ok(())
    }

    fn group_config(&self, group_id: &str, name: &str) -> Option<String> {
        lock(&self.group_configs).get(group_id).and_then(|c| c.get(name).cloned())
    }

    fn group_config_int(&self, group_id: &str, name: &str, default: i64) -> i64 {
        self.group_config(group_id, name).and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    fn share_limits(&self, group_id: &str) -> Limits {
        let s = &self.settings;
        Limits {
            record_lock_duration_ms: self.group_config_int(
                group_id,
                "share.record.lock.duration.ms",
                s.share_record_lock_duration_ms.into(),
            ),
            delivery_count_limit: self.group_config_int(group_id, "share.delivery.count.limit", s.share_delivery_count_limit.into()) as i16,
            max_record_locks: s.share_max_record_locks,
        }
    }

    /// The group's settings with its own session timeout and heartbeat interval.
    fn share_settings(&self, group_id: &str) -> super::GroupSettings {
        let mut s = self.settings.clone();
        s.share_session_timeout_ms = self.group_config_int(group_id, "share.session.timeout.ms", s.share_session_timeout_ms.into()) as i32;
        s.share_heartbeat_interval_ms =
            self.group_config_int(group_id, "share.heartbeat.interval.ms", s.share_heartbeat_interval_ms.into()) as i32;
        s
    }

    fn reset_of(&self, group_id: &str) -> Reset {
        match self.group_config(group_id, AUTO_OFFSET_RESET).as_deref() {
            Some("earliest") => Reset::Earliest,
            _ => Reset::Latest,
        }
    }

    /// The group's partitions (created empty for a new share group).
    fn group_partitions(&self, group_id: &str) -> GroupPartitions {
        lock(&self.shares).entry(group_id.to_string()).or_default().clone()
    }

    /// Blocking. ShareGroupHeartbeat; the share-partitions of a new assignment are created
    /// (at the log end, or its start with `share.auto.offset.reset=earliest`) before it is
    /// answered, as Kafka initializes them, so records produced after that are all delivered.
    pub fn share_heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, GroupError> {
        Self::check_group_id(&req.group_id)?;
        let group_id = req.group_id.clone();
        let settings = self.share_settings(&group_id);
        let (response, assigned, leaving) = {
            let mut groups = self.groups();
            self.closing()?;
            if req.member_epoch != 0 && !groups.contains_key(&group_id) {
                return Err(GroupError::UnknownMemberId);
            }
            let e = self.entry_for_join(&mut groups, &group_id, super::Protocol::Share)?;
            let Kind::Share(g) = &mut e.kind else {
                return Err(GroupError::GroupIdNotFound);
            };
            let leaving = (req.member_epoch == LEAVE_EPOCH).then(|| req.member_id.clone());
            let response = g.heartbeat(Instant::now(), &settings, &*self.topics, &*self.entropy, req)?;
            let assigned = g.assigned_partitions();
            self.wake(&group_id, e);
            (response, assigned, leaving)
        };
        // After the coordinator's lock: the group's share-partitions may be held over a store write.
        if let Some(member) = leaving {
            self.release_member(&group_id, &member);
        }
        if response.member_epoch != LEAVE_EPOCH {
            self.init_share_partitions(&group_id, assigned.into_iter())?;
        }
        Ok(response)
    }

    /// A member left or its session expired: the records it held are available again.
    pub(super) fn release_member(&self, group_id: &str, member_id: &str) {
        let partitions = self.group_partitions(group_id);
        let limits = self.share_limits(group_id);
        for p in lock(&partitions).values_mut() {
            p.release_member(member_id, &limits);
        }
    }

    /// Blocking. Creates the share-partitions of `partitions` that do not exist yet.
    fn init_share_partitions(&self, group_id: &str, partitions: impl Iterator<Item = (Uuid, i32)>) -> Result<(), GroupError> {
        let shared = self.group_partitions(group_id);
        let mut state = lock(&shared);
        let new: Vec<(Uuid, i32)> = partitions.filter(|k| !state.contains_key(k)).collect();
        if new.is_empty() {
            return Ok(());
        }
        if self.share_partitions_held.load(Ordering::Relaxed) + new.len() > self.settings.max_share_partitions {
            return Err(GroupError::Unavailable("the coordinator holds its maximum of share-partitions (max_share_partitions)".into()));
        }
        let reset = self.reset_of(group_id);
        let mut rows = Vec::new();
        let mut created = Vec::new();
        for (t, p) in new {
            let Some(offsets) = self.topics.offsets(t, p) else { continue };
            let start = if reset == Reset::Earliest { offsets.log_start_offset } else { offsets.next_offset };
            let sp = SharePartition::new(start);
            rows.push(self.share_row(group_id, (t, p), &sp)?);
            created.push(((t, p), sp));
        }
        self.store.put_share_partitions(&rows).map_err(no_state)?;
        self.share_partitions_held.fetch_add(created.len(), Ordering::Relaxed);
        state.extend(created);
        Ok(())
    }

    fn share_row(
        &self,
        group_id: &str,
        (topic_id, partition): (Uuid, i32),
        p: &SharePartition,
    ) -> Result<SharePartitionRecord, GroupError> {
        let body = serde_json::to_string(&p.durable()).map_err(|e| GroupError::Unavailable(format!("share state encoding: {e}")))?;
        Ok(SharePartitionRecord { group_id: group_id.to_string(), topic_id, partition, body })
    }

    /// Blocking. ShareFetch and ShareAcknowledge: acknowledgements first, then acquisitions
    /// (up to `max_records` over all partitions); written to the store before answered.
    pub fn share_records(&self, req: RecordsRequest) -> Result<RecordsAnswer, GroupError> {
        Self::check_group_id(&req.group_id)?;
        {
            let groups = self.groups();
            match groups.get(&req.group_id) {
                Some(Entry { kind: Kind::Share(_), .. }) => {}
                _ => return Err(GroupError::GroupIdNotFound),
            }
        }
        let limits = self.share_limits(&req.group_id);
        let wanted: Vec<(Uuid, i32)> = req
            .partitions
            .iter()
            .map(|p| (p.topic_id, p.partition))
            .filter(|(t, p)| self.topics.offsets(*t, *p).is_some())
            .collect();
        self.init_share_partitions(&req.group_id, wanted.into_iter())?;
        let shared = self.group_partitions(&req.group_id);
        let mut state = lock(&shared);
        let now_ms = self.clock.now_ms();
        let mut budget = req.max_records as usize;
        let mut changed: BTreeMap<(Uuid, i32), SharePartition> = BTreeMap::new();
        for (t, p, first, last) in &req.unsent {
            if let Some(sp) = state.get(&(*t, *p)) {
                let sp = changed.entry((*t, *p)).or_insert_with(|| sp.clone());
                sp.unacquire(&req.member_id, *first, *last);
            }
        }
        let mut answers = Vec::with_capacity(req.partitions.len());
        for pr in &req.partitions {
            let key = (pr.topic_id, pr.partition);
            let mut answer =
                PartitionAnswer { topic_id: pr.topic_id, partition: pr.partition, error: None, ack_error: None, acquired: vec![] };
            let (Some(offsets), Some(current)) = (self.topics.offsets(pr.topic_id, pr.partition), state.get(&key)) else {
                answer.error = Some(GroupError::UnknownTopicOrPartition);
                answers.push(answer);
                continue;
            };
            let sp = changed.entry(key).or_insert_with(|| current.clone());
            for batch in &pr.acks {
                if let Err(e) = sp.acknowledge(&req.member_id, batch, now_ms, &limits) {
                    answer.ack_error.get_or_insert(match e {
                        AckError::InvalidRecordState(why) => GroupError::InvalidRecordState(why),
                        AckError::InvalidRequest(why) => GroupError::InvalidRequest(why),
                    });
                }
            }
            if pr.acquire && budget > 0 {
                answer.acquired = sp.acquire(&req.member_id, budget, offsets.log_start_offset, offsets.next_offset, now_ms, &limits);
                budget -= answer.acquired.iter().map(|a| (a.last_offset - a.first_offset + 1) as usize).sum::<usize>().min(budget);
            } else {
                sp.expire_locks(now_ms, &limits);
            }
            answers.push(answer);
        }
        let changed: Vec<((Uuid, i32), SharePartition)> = changed.into_iter().filter(|(k, sp)| state.get(k) != Some(sp)).collect();
        if !changed.is_empty() {
            let rows = changed.iter().map(|(k, sp)| self.share_row(&req.group_id, *k, sp)).collect::<Result<Vec<_>, _>>()?;
            self.store.put_share_partitions(&rows).map_err(no_state)?;
            state.extend(changed);
        }
        Ok(RecordsAnswer { partitions: answers, lock_duration_ms: limits.record_lock_duration_ms.clamp(0, i32::MAX.into()) as i32 })
    }

    /// ShareGroupDescribe; `GroupIdNotFound` for unknown groups and groups of other types.
    pub fn share_describe(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        Self::check_group_id(group_id)?;
        let groups = self.groups();
        match groups.get(group_id) {
            Some(Entry { kind: Kind::Share(g), .. }) => Ok(g.describe(&*self.topics)),
            _ => Err(GroupError::GroupIdNotFound),
        }
    }

    fn share_group_exists(&self, group_id: &str) -> Result<bool, GroupError> {
        Self::check_group_id(group_id)?;
        let groups = self.groups();
        match groups.get(group_id) {
            Some(Entry { kind: Kind::Share(g), .. }) => Ok(!g.is_empty()),
            _ => Err(GroupError::GroupIdNotFound),
        }
    }

    /// DescribeShareGroupOffsets: the start offset of each share-partition of `topics` (topic
    /// name, partitions), or of every one the group has.
    pub fn share_offsets(&self, group_id: &str, topics: Option<&[(String, Vec<i32>)]>) -> Result<Vec<StartOffset>, GroupError> {
        self.share_group_exists(group_id)?;
        let shared = self.group_partitions(group_id);
        let state = lock(&shared);
        let entry = |topic: &str, partition: i32| {
            let id = self.topics.by_name(topic).map(|t| t.id);
            let sp = id.and_then(|id| state.get(&(id, partition)));
            StartOffset {
                topic: topic.to_string(),
                partition,
                start_offset: sp.map(SharePartition::start_offset),
                done_in_window: sp.map_or(0, SharePartition::done_in_window),
            }
        };
        Ok(match topics {
            Some(ts) => ts.iter().flat_map(|(t, ps)| ps.iter().map(|p| entry(t, *p)).collect::<Vec<_>>()).collect(),
            None => state.keys().filter_map(|(id, p)| self.topics.by_id(*id).map(|t| entry(&t.name, *p))).collect::<Vec<_>>(),
        })
    }

    /// Blocking. AlterShareGroupOffsets (the group must have no members): each partition starts
    /// over at its offset (-1: the log end).
    pub fn alter_share_offsets(&self, group_id: &str, offsets: &[(String, i32, i64)]) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if self.share_group_exists(group_id)? {
            return Err(GroupError::NonEmptyGroup);
        }
        let shared = self.group_partitions(group_id);
        let mut state = lock(&shared);
        let mut results = Vec::with_capacity(offsets.len());
        let mut changed = Vec::new();
        for (topic, partition, offset) in offsets {
            let found = self.topics.by_name(topic).and_then(|t| self.topics.offsets(t.id, *partition).map(|o| (t.id, o)));
            let Some((id, o)) = found else {
                results.push(Err(GroupError::UnknownTopicOrPartition));
                continue;
            };
            let start = if *offset < 0 { o.next_offset } else { (*offset).clamp(o.log_start_offset, o.next_offset) };
            let mut sp = state.get(&(id, *partition)).cloned().unwrap_or_else(|| SharePartition::new(start));
            sp.reset(start);
            changed.push(((id, *partition), sp));
            results.push(Ok(()));
        }
        let rows = changed.iter().map(|(k, sp)| self.share_row(group_id, *k, sp)).collect::<Result<Vec<_>, _>>()?;
        self.store.put_share_partitions(&rows).map_err(no_state)?;
        state.extend(changed);
        Ok(results)
    }

    /// Blocking. DeleteShareGroupOffsets (the group must have no members): the group forgets
    /// its state of every partition of `topics`; one result per topic.
    pub fn delete_share_offsets(&self, group_id: &str, topics: &[String]) -> Result<Vec<Result<Uuid, GroupError>>, GroupError> {
        if self.share_group_exists(group_id)? {
            return Err(GroupError::NonEmptyGroup);
        }
        let shared = self.group_partitions(group_id);
        let mut state = lock(&shared);
        let mut results = Vec::with_capacity(topics.len());
        let mut gone = Vec::new();
        for topic in topics {
            match self.topics.by_name(topic) {
                None => results.push(Err(GroupError::UnknownTopicOrPartition)),
                Some(t) => {
                    gone.extend(state.keys().filter(|(id, _)| *id == t.id).copied());
                    results.push(Ok(t.id));
                }
            }
        }
        self.store.delete_share_partitions(group_id, Some(&gone)).map_err(no_state)?;
        for k in gone {
            if state.remove(&k).is_some() {
                self.share_partitions_held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(results)
    }

    /// Blocking. DeleteGroups of a share group: its state goes too.
    pub(super) fn delete_share_state(&self, group_id: &str) -> Result<(), StoreError> {
        let shared = self.group_partitions(group_id);
        {
            let mut state = lock(&shared);
            self.store.delete_share_partitions(group_id, None)?;
            self.share_partitions_held.fetch_sub(state.len(), Ordering::Relaxed);
            state.clear();
        }
        lock(&self.shares).remove(group_id);
        Ok(())
    }

    /// The topic `id` was deleted (the store dropped its share state in the deletion).
    pub(super) fn forget_share_topic(&self, id: Uuid) {
        let all: Vec<GroupPartitions> = lock(&self.shares).values().cloned().collect();
        for g in all {
            let mut state = lock(&g);
            let before = state.len();
            state.retain(|(t, _), _| *t != id);
            self.share_partitions_held.fetch_sub(before - state.len(), Ordering::Relaxed);
        }
    }

    /// A group's configs as set (DescribeConfigs adds the defaults).
    pub fn group_configs(&self, group_id: &str) -> BTreeMap<String, String> {
        lock(&self.group_configs).get(group_id).cloned().unwrap_or_default()
    }

    /// The default of each group config (this coordinator's settings).
    pub fn group_config_defaults(&self) -> BTreeMap<String, String> {
        let s = &self.settings;
        [
            ("share.session.timeout.ms", s.share_session_timeout_ms.to_string()),
            ("share.heartbeat.interval.ms", s.share_heartbeat_interval_ms.to_string()),
            ("share.record.lock.duration.ms", s.share_record_lock_duration_ms.to_string()),
            ("share.delivery.count.limit", s.share_delivery_count_limit.to_string()),
            (AUTO_OFFSET_RESET, "latest".to_string()),
            (ISOLATION_LEVEL, "read_uncommitted".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Blocking. Sets (`Some`) and removes (`None`) configs of one group (IncrementalAlterConfigs
    /// on a GROUP resource): all valid or none applied.
    pub fn alter_group_configs(&self, group_id: &str, changes: &[(String, Option<String>)], validate_only: bool) -> Result<(), GroupError> {
        Self::check_group_id(group_id)?;
        for (name, value) in changes {
            match value {
                Some(v) => validate_group_config(name, v).map_err(GroupError::InvalidConfig)?,
                None if !group_config_names().contains(&name.as_str()) => {
                    return Err(GroupError::InvalidConfig(format!("unknown or unsupported group config {name}")));
                }
                None => {}
            }
        }
        let _w = lock(&self.offsets_write);
        let mut next = self.group_configs(group_id);
        for (name, value) in changes {
            match value {
                Some(v) => next.insert(name.clone(), v.clone()),
                None => next.remove(name),
            };
        }
        if next.len() > GROUP_CONFIGS_MAX {
            return Err(GroupError::InvalidConfig(format!("a group holds at most {GROUP_CONFIGS_MAX} configs")));
        }
        if validate_only {
            return Ok(());
        }
        let groups_with_configs = lock(&self.group_configs).len();
        if !next.is_empty() && groups_with_configs >= self.settings.max_groups && !lock(&self.group_configs).contains_key(group_id) {
            return Err(GroupError::TooManyGroups);
        }
        self.store.alter_group_configs(group_id, changes).map_err(no_state)?;
        let mut all = lock(&self.group_configs);
        if next.is_empty() {
            all.remove(group_id);
        } else {
            all.insert(group_id.to_string(), next);
        }
        Ok(())
    }
}
