//! KIP-848 consumer groups: ConsumerGroupHeartbeat with server-side assignment.
//!
//! The group has an epoch, bumped whenever membership, subscriptions or the partition counts of
//! subscribed topics change; a target assignment computed by an [`assignor`](super::assignor)
//! for that epoch; and each member reconciles towards its target over its heartbeats, as in
//! Kafka's `CurrentAssignmentBuilder`:
//!
//! - partitions the member owns but must give up are revoked first (the member keeps its epoch
//!   until a heartbeat shows it no longer owns them, within its rebalance timeout or it is
//!   fenced);
//! - then it moves to the target epoch and gets the target partitions no other member still
//!   owns; partitions still being released by others follow in later heartbeats.
//!
//! A partition is therefore never owned by two members at once. Members whose session expires
//! are removed.
//!
//! A member subscribes by topic names, by a regular expression (RE2 syntax, as Kafka's RE2/J,
//! matched against whole names, internal topics' too, as Kafka does), or both. Expressions are
//! matched again on the heartbeat after a change and at most every [`REGEX_REFRESH`] otherwise,
//! so a topic created after a member joined is assigned within about a second plus a heartbeat. Static members (`instance_id`) that leave with epoch -2 keep their place and
//! assignment for the session timeout, so a restart gets its partitions back.
//!
//! Must not touch: Kafka wire types, the store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::assignor::{self, ASSIGNORS, MemberSpec, TopicSpecs};
use super::{GroupSettings, TopicLookup};
use crate::api::groups::consumer::{GroupDescription, HeartbeatRequest, HeartbeatResponse, MemberDescription};
use crate::api::groups::{Assignment, ClientInfo, GroupError};
use crate::clock::Entropy;

/// Epoch -1: the member leaves; -2: a static member leaves for now (it will rejoin).
pub const LEAVE_EPOCH: i32 = -1;
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// How often the members' regular expressions are matched against the topics again.
pub const REGEX_REFRESH: Duration = Duration::from_secs(1);
/// The longest regular expression a member may send, and its compiled size limit.
pub const REGEX_BYTES_MAX: usize = 4096;
const REGEX_COMPILED_BYTES_MAX: usize = 1 << 20;

/// Compiles a subscription's expression to match whole topic names (None: empty, no regex).
pub(super) fn compile_regex(regex: &str) -> Result<Option<regex_lite::Regex>, GroupError> {
    if regex.is_empty() {
        return Ok(None);
    }
    if regex.len() > REGEX_BYTES_MAX {
        return Err(GroupError::InvalidRegularExpression(format!("longer than {REGEX_BYTES_MAX} bytes")));
    }
    regex_lite::RegexBuilder::new(&format!("^(?:{regex})$"))
        .size_limit(REGEX_COMPILED_BYTES_MAX)
        .build()
        .map(Some)
        .map_err(|e| GroupError::InvalidRegularExpression(e.to_string()))
}

struct Member {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client: ClientInfo,
    rebalance_timeout: Duration,
    /// Topics subscribed by name.
    topics: BTreeSet<String>,
    /// The regular expression as sent, and compiled.
    regex: Option<(String, regex_lite::Regex)>,
    /// What the member is subscribed to: `topics` and the existing topics `regex` matches.
    subscribed: BTreeSet<String>,
    assignor: Option<String>,
    epoch: i32,
    previous_epoch: i32,
    assigned: Assignment,
    pending_revocation: Assignment,
    /// The member epoch at which each partition it owns (assigned or pending revocation) was
    /// assigned to it: a commit at an older member epoch is accepted for partitions it has
    /// owned since that epoch (KIP-1251).
    partition_epochs: BTreeMap<(Uuid, i32), i32>,
    session_deadline: Instant,
    revocation_deadline: Option<Instant>,
}

#[derive(Default)]
pub struct ConsumerGroup {
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Assignment>,
    /// The subscribed topics' ids and partition counts the target was computed from.
    topics: TopicSpecs,
    assignor: String,
    /// When the members' regular expressions were last matched against the topics.
    regex_matched_at: Option<Instant>,
}

/// Partitions by topic id, or tasks by subtopology id: the sets reconciliation compares.
pub(super) type Sets<K> = BTreeMap<K, BTreeSet<i32>>;

pub(super) fn is_subset<K: Ord>(a: &Sets<K>, b: &Sets<K>) -> bool {
    a.iter().all(|(t, ps)| ps.is_empty() || b.get(t).is_some_and(|bs| ps.is_subset(bs)))
}

pub(super) fn minus<K: Ord + Clone>(a: &Sets<K>, b: &Sets<K>) -> Sets<K> {
    a.iter()
        .map(|(t, ps)| (t.clone(), ps.iter().filter(|p| !b.get(t).is_some_and(|bs| bs.contains(p))).copied().collect::<BTreeSet<_>>()))
        .filter(|(_, ps)| !ps.is_empty())
        .collect()
}

pub(super) fn intersect<K: Ord + Clone>(a: &Sets<K>, b: &Sets<K>) -> Sets<K> {
    a.iter()
        .map(|(t, ps)| (t.clone(), ps.iter().filter(|p| b.get(t).is_some_and(|bs| bs.contains(p))).copied().collect::<BTreeSet<_>>()))
        .filter(|(_, ps)| !ps.is_empty())
        .collect()
}

pub(super) fn overlaps<K: Ord + Clone>(a: &Sets<K>, b: &Sets<K>) -> bool {
    !intersect(a, b).is_empty()
}

/// The member epoch rules KIP-848 and KIP-1071 (streams) groups share.
pub(super) mod epochs {
    use tokio::time::Instant;

    use crate::api::groups::GroupError;

    /// An offset commit at `epoch` by a member now at `current`: its epoch, or (KIP-1251) an
    /// older one when `owned_since` says it has owned what it commits since then.
    pub fn check_commit(current: i32, epoch: i32, owned_since: impl FnOnce() -> bool) -> Result<(), GroupError> {
        if epoch == current || (epoch < current && owned_since()) { Ok(()) } else { Err(GroupError::StaleMemberEpoch) }
    }

    /// An offset fetch at `epoch` by `member_id` (`current`: its epoch, None: not a member); no
    /// member named with a negative epoch is an admin's fetch.
    pub fn check_fetch(current: Option<i32>, member_id: &str, epoch: i32) -> Result<(), GroupError> {
        if epoch < 0 && member_id.is_empty() {
            return Ok(());
        }
        if epoch != current.ok_or(GroupError::UnknownMemberId)? { Err(GroupError::StaleMemberEpoch) } else { Ok(()) }
    }

    /// Whether a heartbeat at `epoch` is fenced: a member may only be at its current epoch, or
    /// at its previous one (a response it did not get) owning nothing beyond its assignment.
    pub fn fenced(epoch: i32, current: i32, previous: i32, owned_within_assignment: bool) -> bool {
        epoch > current || (epoch < current && (epoch != previous || !owned_within_assignment))
    }

    /// Whether a member's session ended or its revocation took too long.
    pub fn expired(now: Instant, session_deadline: Instant, revocation_deadline: Option<Instant>) -> bool {
        session_deadline <= now || revocation_deadline.is_some_and(|d| d <= now)
    }
}

impl ConsumerGroup {
    pub fn new() -> Self {
        Self { assignor: assignor::UNIFORM.to_string(), ..Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's consumer group states.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self.members.values().any(|m| m.epoch != self.assignment_epoch || !m.pending_revocation.is_empty()) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.members.values().flat_map(|m| [Some(m.session_deadline), m.revocation_deadline]).flatten().min()
    }

    /// Removes members whose session expired or that did not revoke in time.
    pub fn on_time(&mut self, now: Instant, _topics: &dyn TopicLookup) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| epochs::expired(now, m.session_deadline, m.revocation_deadline))
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            tracing::info!(member = %id, "consumer group member expired or failed to revoke in time");
            self.remove(&id);
        }
    }

    fn remove(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.target.remove(id);
            self.group_epoch = self.group_epoch.saturating_add(1);
        }
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.subscribed.iter().cloned()).collect()
    }

    /// OffsetCommit by a member (admin commits, epoch < 0 without member id, only into an
    /// empty group). At the member's epoch anything goes; at an older epoch, as Kafka 4.4
    /// (KIP-1251), only partitions the member has owned since that epoch, so that a commit sent
    /// before a heartbeat moved the member on is not lost; `partitions` None (transactional
    /// commits) takes the member's epoch only.
    pub fn validate_offset_commit(
        &self,
        member_id: &str,
        epoch: i32,
        api_version: i16,
        partitions: Option<&[(Uuid, i32)]>,
    ) -> Result<(), GroupError> {
        if epoch < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        let m = self.members.get(member_id).ok_or(GroupError::UnknownMemberId)?;
        if api_version < 9 {
            return Err(GroupError::UnsupportedVersion("members of consumer groups commit with OffsetCommit v9+".into()));
        }
        let owned_since = |tp: &(Uuid, i32)| m.partition_epochs.get(tp).is_some_and(|since| *since <= epoch);
        epochs::check_commit(m.epoch, epoch, || partitions.is_some_and(|ps| ps.iter().all(owned_since)))
    }

    pub fn validate_offset_fetch(&self, member_id: &str, epoch: i32) -> Result<(), GroupError> {
        epochs::check_fetch(self.members.get(member_id).map(|m| m.epoch), member_id, epoch)
    }

    pub fn heartbeat(
        &mut self,
        now: Instant,
        settings: &GroupSettings,
        topics: &dyn TopicLookup,
        entropy: &dyn Entropy,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, GroupError> {
        if let Some(a) = &req.server_assignor
            && !ASSIGNORS.contains(&a.as_str())
        {
            return Err(GroupError::UnsupportedAssignor(a.clone()));
        }
        let regex = match &req.subscribed_topic_regex {
            Some(r) => Some(compile_regex(r)?.map(|compiled| (r.clone(), compiled))),
            None => None,
        };
        let session = Duration::from_millis(settings.consumer_session_timeout_ms.max(0) as u64);
        let interval = settings.consumer_heartbeat_interval_ms;
        if req.member_epoch == LEAVE_EPOCH || req.member_epoch == STATIC_LEAVE_EPOCH {
            let id = match (&req.instance_id, req.member_id.is_empty()) {
                (Some(inst), true) => self.static_member(inst).ok_or(GroupError::UnknownMemberId)?,
                _ => req.member_id.clone(),
            };
            let m = self.members.get_mut(&id).ok_or(GroupError::UnknownMemberId)?;
            if req.member_epoch == STATIC_LEAVE_EPOCH && m.instance_id.is_some() {
                // Kept (with its assignment) until it rejoins or its session ends.
                m.previous_epoch = m.epoch;
                m.epoch = STATIC_LEAVE_EPOCH;
                m.session_deadline = now + session;
            } else {
                self.remove(&id);
            }
            return Ok(HeartbeatResponse { member_id: id, member_epoch: req.member_epoch, heartbeat_interval_ms: 0, assignment: None });
        }
        let full = req.member_epoch == 0 || (req.rebalance_timeout_ms != -1 && req.subscribed_topic_names.is_some() && req.owned.is_some());
        let mut bump = false;
        let member_id = if req.member_epoch == 0 {
            let (id, new) = self.join(now, session, entropy, &req, settings)?;
            bump = new;
            id
        } else {
            let m = self.members.get(&req.member_id).ok_or(GroupError::UnknownMemberId)?;
            let owned_ok = req.owned.as_ref().is_none_or(|o| is_subset(o, &m.assigned));
            if epochs::fenced(req.member_epoch, m.epoch, m.previous_epoch, owned_ok) {
                return Err(GroupError::FencedMemberEpoch);
            }
            req.member_id.clone()
        };
        let Some(m) = self.members.get_mut(&member_id) else { return Err(GroupError::UnknownMemberId) };
        m.session_deadline = now + session;
        if req.rebalance_timeout_ms >= 0 {
            m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
        }
        if req.rack_id.is_some() {
            m.rack_id = req.rack_id.clone();
        }
        if req.server_assignor.is_some() {
            m.assignor = req.server_assignor.clone();
        }
        m.client = req.client.clone();
        if let Some(names) = &req.subscribed_topic_names {
            let names: BTreeSet<String> = names.iter().cloned().collect();
            if names != m.topics {
                m.topics = names;
                bump = true;
            }
        }
        if let Some(regex) = regex
            && regex.as_ref().map(|(r, _)| r) != m.regex.as_ref().map(|(r, _)| r)
        {
            m.regex = regex;
            bump = true;
        }
        self.refresh_target(now, topics, bump);
        let before = self.members.get(&member_id).map(|m| (m.epoch, m.assigned.clone()));
        self.reconcile(now, &member_id, req.owned.as_ref());
        let m = self.members.get(&member_id).ok_or(GroupError::UnknownMemberId)?;
        let changed = before.is_none_or(|(e, a)| e != m.epoch || a != m.assigned);
        Ok(HeartbeatResponse {
            member_id: member_id.clone(),
            member_epoch: m.epoch,
            heartbeat_interval_ms: interval,
            assignment: (full || changed).then(|| m.assigned.clone()),
        })
    }

    fn static_member(&self, instance: &str) -> Option<String> {
        self.members.values().find(|m| m.instance_id.as_deref() == Some(instance)).map(|m| m.id.clone())
    }

    /// A heartbeat with epoch 0: a new member, a member rejoining, or a static member
    /// replacing its earlier incarnation.
    fn join(
        &mut self,
        now: Instant,
        session: Duration,
        entropy: &dyn Entropy,
        req: &HeartbeatRequest,
        settings: &GroupSettings,
    ) -> Result<(String, bool), GroupError> {
        if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.as_deref().is_none_or(str::is_empty) {
            return Err(GroupError::InvalidRequest("SubscribedTopicNames or SubscribedTopicRegex must be set when joining".into()));
        }
        if req.rebalance_timeout_ms < 0 {
            return Err(GroupError::InvalidRequest("RebalanceTimeoutMs must be set when joining".into()));
        }
        if req.owned.as_ref().is_some_and(|o| o.values().any(|ps| !ps.is_empty())) {
            return Err(GroupError::InvalidRequest("TopicPartitions must be empty when joining".into()));
        }
        let id = match (req.member_id.is_empty(), req.api_version) {
            (true, 0) => entropy.uuid().to_string(),
            (true, _) => return Err(GroupError::InvalidRequest("MemberId can't be empty".into())),
            (false, _) => req.member_id.clone(),
        };
        if let Some(inst) = &req.instance_id
            && let Some(old) = self.static_member(inst)
            && old != id
        {
            let Some(prev) = self.members.get(&old) else { return Err(GroupError::UnknownMemberId) };
            if prev.epoch != STATIC_LEAVE_EPOCH {
                return Err(GroupError::UnreleasedInstanceId);
            }
            // The new incarnation takes over the old one's assignment and epoch.
            if let Some(mut m) = self.members.remove(&old) {
                m.id = id.clone();
                m.epoch = m.previous_epoch.max(0);
                if let Some(t) = self.target.remove(&old) {
                    self.target.insert(id.clone(), t);
                }
                self.members.insert(id.clone(), m);
            }
            return Ok((id, false));
        }
        if let Some(m) = self.members.get_mut(&id) {
            // Rejoining (after an error): it owns nothing any more.
            m.assigned.clear();
            m.pending_revocation.clear();
            m.partition_epochs.clear();
            m.revocation_deadline = None;
            m.epoch = 0;
            return Ok((id, false));
        }
        if self.members.len() >= settings.max_members_per_group {
            return Err(GroupError::GroupMaxSizeReached);
        }
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: req.instance_id.clone(),
                rack_id: None,
                client: req.client.clone(),
                rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                topics: BTreeSet::new(),
                regex: None,
                subscribed: BTreeSet::new(),
                assignor: None,
                epoch: 0,
                previous_epoch: 0,
                assigned: Assignment::new(),
                pending_revocation: Assignment::new(),
                partition_epochs: BTreeMap::new(),
                session_deadline: now + session,
                revocation_deadline: None,
            },
        );
        Ok((id, true))
    }

    /// Each member's subscribed topics: its names, and what its regex matches (matched again
    /// when `changed`, or when the last match is `REGEX_REFRESH` old). True if any changed.
    fn resolve_subscriptions(&mut self, now: Instant, topics: &dyn TopicLookup, changed: bool) -> bool {
        let rematch = changed || self.regex_matched_at.is_none_or(|at| now.saturating_duration_since(at) >= REGEX_REFRESH);
        let any_regex = self.members.values().any(|m| m.regex.is_some());
        let names = if rematch && any_regex {
            self.regex_matched_at = Some(now);
            topics.names()
        } else {
            Vec::new()
        };
        let mut any = false;
        for m in self.members.values_mut() {
            let mut subscribed = m.topics.clone();
            match &m.regex {
                Some((_, re)) if rematch => subscribed.extend(names.iter().filter(|n| re.is_match(n)).cloned()),
                // Not matched again this time: keep what it matched last.
                Some(_) => subscribed.extend(m.subscribed.iter().filter(|n| !m.topics.contains(*n)).cloned()),
                None => {}
            }
            if subscribed != m.subscribed {
                m.subscribed = subscribed;
                any = true;
            }
        }
        any
    }

    /// Bumps the group epoch once when `changed` (membership, a subscription), a member's
    /// regex matched other topics, or a subscribed topic's partitions changed, and recomputes
    /// the target assignment for a new epoch.
    fn refresh_target(&mut self, now: Instant, topics: &dyn TopicLookup, changed: bool) {
        let changed = self.resolve_subscriptions(now, topics, changed) || changed;
        let subscribed = self.subscribed_topics();
        let specs: TopicSpecs = subscribed.iter().filter_map(|n| topics.by_name(n).map(|t| (n.clone(), (t.id, t.partitions)))).collect();
        if changed || specs != self.topics {
            self.topics = specs;
            self.group_epoch = self.group_epoch.saturating_add(1);
        }
        if self.group_epoch <= self.assignment_epoch {
            return;
        }
        // The assignor the members ask for most (ties: the first in ASSIGNORS order).
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = m.assignor.as_deref() {
                *votes.entry(a).or_default() += 1;
            }
        }
        let chosen = ASSIGNORS
            .iter()
            .copied()
            .max_by_key(|a| (votes.get(a).copied().unwrap_or(0), std::cmp::Reverse(ASSIGNORS.iter().position(|x| x == a))))
            .unwrap_or(assignor::UNIFORM);
        let specs: Vec<MemberSpec<'_>> = self
            .members
            .values()
            .map(|m| MemberSpec { member_id: &m.id, topics: &m.subscribed, current: &m.assigned })
            .collect();
        self.target = assignor::assign(chosen, &specs, &self.topics);
        self.assignor = chosen.to_string();
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member towards its target (see the module doc).
    fn reconcile(&mut self, now: Instant, id: &str, owned: Option<&Assignment>) {
        let target = self.target.get(id).cloned().unwrap_or_default();
        // Partitions other members still hold (assigned or not yet revoked).
        let mut held = Assignment::new();
        for (other, m) in &self.members {
            if other != id {
                for (t, ps) in m.assigned.iter().chain(m.pending_revocation.iter()) {
                    held.entry(*t).or_default().extend(ps.iter().copied());
                }
            }
        }
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else { return };
        if m.epoch == STATIC_LEAVE_EPOCH {
            return;
        }
        if !m.pending_revocation.is_empty() {
            match owned {
                Some(o) if !overlaps(o, &m.pending_revocation) => {
                    for (t, ps) in &m.pending_revocation {
                        for p in ps {
                            m.partition_epochs.remove(&(*t, *p));
                        }
                    }
                    m.pending_revocation.clear();
                    m.revocation_deadline = None;
                }
                _ => return,
            }
        }
        let revoke = minus(&m.assigned, &target);
        if !revoke.is_empty() {
            m.assigned = intersect(&m.assigned, &target);
            m.pending_revocation = revoke;
            m.revocation_deadline = Some(now + m.rebalance_timeout);
            return;
        }
        let free = minus(&minus(&target, &m.assigned), &held);
        for (t, ps) in free {
            for p in &ps {
                m.partition_epochs.insert((t, *p), assignment_epoch);
            }
            m.assigned.entry(t).or_default().extend(ps);
        }
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
        }
    }

    pub fn describe(&self, topics: &dyn TopicLookup) -> GroupDescription {
        let named = |a: &Assignment| super::named_assignment(a, topics);
        GroupDescription {
            state: self.state_name().to_string(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor_name: self.assignor.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client: m.client.clone(),
                    subscribed_topic_names: m.topics.iter().cloned().collect(),
                    subscribed_topic_regex: m.regex.as_ref().map(|(r, _)| r.clone()),
                    assignment: named(&m.assigned),
                    target_assignment: named(&self.target.get(&m.id).cloned().unwrap_or_default()),
                })
                .collect(),
        }
    }
}
