//! KIP-1071 streams groups: StreamsGroupHeartbeat with server-side task assignment.
//!
//! The members of a Kafka Streams application send their topology when they join: its
//! subtopologies, each with source topics (names or regular expressions), the repartition
//! topics it writes and reads, its changelog topics and copartition groups. The group keeps
//! the topology of its first member (a later member replaces it when its topology epoch is
//! higher, or when it is alone). On every heartbeat the topology is configured against the
//! existing topics, as Kafka's `InternalTopicManager`:
//!
//! - every source topic must exist (else status MISSING_SOURCE_TOPICS, no tasks);
//! - a repartition topic without a fixed partition count gets the largest source partition count
//!   of the subtopologies writing it; copartitioned topics must agree (repartition topics
//!   follow the source topics); a changelog topic has its subtopology's task count;
//! - missing internal topics are returned for the agent to create (Kafka's broker creates them
//!   the same way) with status MISSING_INTERNAL_TOPICS; internal topics that exist with another
//!   partition count give INCORRECTLY_PARTITIONED_TOPICS.
//!
//! Once configured, a subtopology has one task per partition of its largest source topic. The
//! target assignment spreads active tasks evenly and stickily over members (the consumer
//! groups' `uniform` assignor, on tasks), then `streams_num_standby_replicas` standby tasks per
//! task on other processes. Members reconcile towards their targets as in [`super::consumer`]:
//! tasks they must give up are revoked first (until a heartbeat no longer reports them, within
//! the rebalance timeout), and an active task goes to its new owner only once no other member
//! reports it. Warm-up tasks are never assigned.
//!
//! Must not touch: Kafka wire types, the store, topic creation (the agent creates what a
//! heartbeat response lists).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::assignor::{self, MemberSpec, TopicSpecs};
use super::consumer::{LEAVE_EPOCH, STATIC_LEAVE_EPOCH, compile_regex, epochs, intersect, is_subset, minus, overlaps};
use super::{GroupSettings, TopicLookup};
use crate::api::groups::streams::{
    GroupDescription, HeartbeatRequest, HeartbeatResponse, MemberDescription, STATUS_INCORRECTLY_PARTITIONED_TOPICS,
    STATUS_MISSING_INTERNAL_TOPICS, STATUS_MISSING_SOURCE_TOPICS, STATUS_SHUTDOWN_APPLICATION, STATUS_STALE_TOPOLOGY, Status, Subtopology,
    Tasks, TopicToCreate, Topology,
};
use crate::api::groups::{Assignment, ClientInfo, GroupError};

/// Bounds of a topology a member may send.
pub const SUBTOPOLOGIES_MAX: usize = 1_000;
pub const TOPICS_PER_SUBTOPOLOGY_MAX: usize = 1_000;
pub const TOPIC_CONFIGS_MAX: usize = 100;
/// Kafka's longest topic name.
const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Tasks a group may have (all subtopologies' partitions together).
pub const TASKS_MAX: i64 = 100_000;
/// Client tags (rack-aware assignment) a member may send.
pub const CLIENT_TAGS_MAX: usize = 64;

/// A member's tasks of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Owned {
    active: Tasks,
    standby: Tasks,
    warmup: Tasks,
}

impl Owned {
    fn is_empty(&self) -> bool {
        self.active.is_empty() && self.standby.is_empty() && self.warmup.is_empty()
    }

    fn overlaps(&self, other: &Owned) -> bool {
        overlaps(&self.active, &other.active) || overlaps(&self.standby, &other.standby) || overlaps(&self.warmup, &other.warmup)
    }

    fn minus(&self, other: &Owned) -> Owned {
        Owned {
            active: minus(&self.active, &other.active),
            standby: minus(&self.standby, &other.standby),
            warmup: minus(&self.warmup, &other.warmup),
        }
    }

    fn intersect(&self, other: &Owned) -> Owned {
        Owned {
            active: intersect(&self.active, &other.active),
            standby: intersect(&self.standby, &other.standby),
            warmup: intersect(&self.warmup, &other.warmup),
        }
    }

    fn parts(&self) -> (Tasks, Tasks, Tasks) {
        (self.active.clone(), self.standby.clone(), self.warmup.clone())
    }
}

struct Member {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client: ClientInfo,
    rebalance_timeout: Duration,
    topology_epoch: i32,
    process_id: String,
    user_endpoint: Option<(String, u16)>,
    client_tags: Vec<(String, String)>,
    epoch: i32,
    previous_epoch: i32,
    assigned: Owned,
    pending_revocation: Owned,
    /// What the member last said it owns.
    reported: Owned,
    /// The member epoch at which each active task it owns was assigned to it: a commit at an
    /// older epoch is accepted for the tasks it has owned since that epoch.
    task_epochs: BTreeMap<(String, i32), i32>,
    session_deadline: Instant,
    revocation_deadline: Option<Instant>,
}

/// The topology configured against the existing topics.
#[derive(Debug, Default, PartialEq)]
struct Configured {
    /// Task count of each subtopology; `None`: not ready (see `status`).
    tasks: Option<BTreeMap<String, i32>>,
    status: Vec<Status>,
    create: Vec<TopicToCreate>,
}

#[derive(Default)]
pub struct StreamsGroup {
    group_epoch: i32,
    assignment_epoch: i32,
    topology: Option<Topology>,
    configured: Configured,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Owned>,
    /// A member asked every instance to shut down (KIP-1071 SHUTDOWN_APPLICATION).
    shutdown_requested: bool,
}

fn bad(detail: String) -> GroupError {
    GroupError::StreamsInvalidTopology(detail)
}

/// Checks a topology's shape and bounds (not its topics' existence).
fn validate_topology(t: &Topology) -> Result<(), GroupError> {
    if t.epoch < 0 {
        return Err(bad("the topology epoch is negative".into()));
    }
    if t.subtopologies.len() > SUBTOPOLOGIES_MAX {
        return Err(bad(format!("more than {SUBTOPOLOGIES_MAX} subtopologies")));
    }
    let mut ids = BTreeSet::new();
    let name_ok = |n: &str| !n.is_empty() && n.len() <= TOPIC_NAME_BYTES_MAX;
    for s in &t.subtopologies {
        if s.id.is_empty() || s.id.len() > TOPIC_NAME_BYTES_MAX || !ids.insert(s.id.as_str()) {
            return Err(bad(format!("subtopology id {:?} is empty, too long or repeated", s.id)));
        }
        let topics = s.source_topics.len()
            + s.source_topic_regex.len()
            + s.changelog_topics.len()
            + s.repartition_sink_topics.len()
            + s.repartition_source_topics.len();
        if topics > TOPICS_PER_SUBTOPOLOGY_MAX || s.copartition_groups.len() > TOPICS_PER_SUBTOPOLOGY_MAX {
            return Err(bad(format!("subtopology {} names more than {TOPICS_PER_SUBTOPOLOGY_MAX} topics", s.id)));
        }
        let names = s.source_topics.iter().chain(&s.repartition_sink_topics).map(String::as_str);
        let infos = s.changelog_topics.iter().chain(&s.repartition_source_topics);
        if let Some(n) = names.chain(infos.clone().map(|i| i.name.as_str())).find(|n| !name_ok(n)) {
            return Err(bad(format!("subtopology {} names an invalid topic {n:?}", s.id)));
        }
        if let Some(i) = infos.clone().find(|i| i.partitions < 0 || i.configs.len() > TOPIC_CONFIGS_MAX) {
            return Err(bad(format!("internal topic {} has a negative partition count or too many configs", i.name)));
        }
        for r in &s.source_topic_regex {
            compile_regex(r)?;
        }
        let in_range = |ix: &[i16], len: usize| ix.iter().all(|i| *i >= 0 && (*i as usize) < len);
        for g in &s.copartition_groups {
            if !in_range(&g.source_topics, s.source_topics.len())
                || !in_range(&g.source_topic_regex, s.source_topic_regex.len())
                || !in_range(&g.repartition_source_topics, s.repartition_source_topics.len())
            {
                return Err(bad(format!("a copartition group of subtopology {} indexes outside its topics", s.id)));
            }
        }
    }
    Ok(())
}

/// The existing topics a subtopology's regular expressions match, sorted.
fn regex_topics(s: &Subtopology, names: &[String]) -> Result<Vec<String>, GroupError> {
    let mut out = BTreeSet::new();
    for r in &s.source_topic_regex {
        if let Some(re) = compile_regex(r)? {
            out.extend(names.iter().filter(|n| re.is_match(n)).cloned());
        }
    }
    Ok(out.into_iter().collect())
}

fn status(code: i8, detail: String) -> Status {
    Status { code, detail }
}

/// Configures `t` against the existing topics (see the module doc).
fn configure(t: &Topology, topics: &dyn TopicLookup) -> Configured {
    let needs_names = t.subtopologies.iter().any(|s| !s.source_topic_regex.is_empty());
    let names = if needs_names { topics.names() } else { Vec::new() };
    // Source topics of each subtopology (by name and matched), with their partition counts.
    let mut counts: BTreeMap<String, i32> = BTreeMap::new();
    let mut sources: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for s in &t.subtopologies {
        let mut mine = s.source_topics.clone();
        let matched = regex_topics(s, &names).unwrap_or_default();
        if !s.source_topic_regex.is_empty() && matched.is_empty() {
            missing.extend(s.source_topic_regex.iter().cloned());
        }
        mine.extend(matched);
        for n in &mine {
            match topics.by_name(n) {
                Some(m) => {
                    counts.insert(n.clone(), m.partitions);
                }
                None => {
                    missing.insert(n.clone());
                }
            }
        }
        sources.insert(&s.id, mine);
    }
    if !missing.is_empty() {
        let detail = format!("Source topics {} are missing.", missing.into_iter().collect::<Vec<_>>().join(", "));
        return Configured { tasks: None, status: vec![status(STATUS_MISSING_SOURCE_TOPICS, detail)], create: Vec::new() };
    }
    // Repartition topics: fixed counts, then those derived from their writers, to a fixpoint.
    let mut fixed: BTreeSet<String> = BTreeSet::new();
    for i in t.subtopologies.iter().flat_map(|s| &s.repartition_source_topics) {
        if i.partitions > 0 {
            counts.insert(i.name.clone(), i.partitions);
            fixed.insert(i.name.clone());
        }
    }
    let inputs = |s: &Subtopology, counts: &BTreeMap<String, i32>| -> Option<i32> {
        let own = sources.get(s.id.as_str()).into_iter().flatten();
        own.chain(s.repartition_source_topics.iter().map(|i| &i.name)).filter_map(|n| counts.get(n).copied()).max()
    };
    for _ in 0..=t.subtopologies.len() {
        let mut progress = false;
        for i in t.subtopologies.iter().flat_map(|s| &s.repartition_source_topics) {
            if counts.contains_key(&i.name) {
                continue;
            }
            let writers = t.subtopologies.iter().filter(|w| w.repartition_sink_topics.contains(&i.name));
            if let Some(n) = writers.filter_map(|w| inputs(w, &counts)).max() {
                counts.insert(i.name.clone(), n);
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let mut wrong: BTreeSet<String> = BTreeSet::new();
    // Copartition groups: source topics must agree; repartition topics follow them.
    for s in &t.subtopologies {
        let own = sources.get(s.id.as_str()).cloned().unwrap_or_default();
        for g in &s.copartition_groups {
            let srcs: Vec<&String> = g.source_topics.iter().filter_map(|i| s.source_topics.get(*i as usize)).collect();
            let reps: Vec<&String> = g
                .repartition_source_topics
                .iter()
                .filter_map(|i| s.repartition_source_topics.get(*i as usize).map(|t| &t.name))
                .collect();
            let regex_matched: Vec<&String> =
                if g.source_topic_regex.is_empty() { Vec::new() } else { own.iter().filter(|n| !s.source_topics.contains(n)).collect() };
            let src_counts: BTreeSet<i32> = srcs.iter().chain(&regex_matched).filter_map(|n| counts.get(*n).copied()).collect();
            if src_counts.len() > 1 {
                wrong.extend(srcs.iter().chain(&regex_matched).map(|n| n.to_string()));
                continue;
            }
            let want = src_counts.first().copied().or_else(|| reps.iter().filter_map(|n| counts.get(*n).copied()).max());
            if let Some(want) = want {
                for r in reps {
                    if fixed.contains(r) && counts.get(r) != Some(&want) {
                        wrong.insert(r.clone());
                    } else {
                        counts.insert(r.clone(), want);
                    }
                }
            }
        }
    }
    let mut tasks = BTreeMap::new();
    let mut create = Vec::new();
    for s in &t.subtopologies {
        let Some(n) = inputs(s, &counts) else {
            wrong.insert(format!("subtopology {} (its partition count cannot be derived)", s.id));
            continue;
        };
        tasks.insert(s.id.clone(), n);
        let internal = s.repartition_source_topics.iter().map(|i| (i, counts.get(&i.name).copied().unwrap_or(n)));
        for (info, want) in internal.chain(s.changelog_topics.iter().map(|i| (i, n))) {
            match topics.by_name(&info.name) {
                Some(m) if m.partitions != want => {
                    wrong.insert(info.name.clone());
                }
                Some(_) => {}
                None if create.iter().any(|c: &TopicToCreate| c.name == info.name) => {}
                None => create.push(TopicToCreate { name: info.name.clone(), partitions: want, configs: info.configs.clone() }),
            }
        }
    }
    let mut out = Configured::default();
    if !wrong.is_empty() {
        let detail = format!("Topics {} are incorrectly partitioned.", wrong.into_iter().collect::<Vec<_>>().join(", "));
        out.status.push(status(STATUS_INCORRECTLY_PARTITIONED_TOPICS, detail));
    }
    if !create.is_empty() {
        let names: Vec<&str> = create.iter().map(|c| c.name.as_str()).collect();
        out.status
            .push(status(STATUS_MISSING_INTERNAL_TOPICS, format!("Internal topics are missing: {}", names.join(", "))));
        out.create = create;
    }
    if out.status.is_empty() {
        if tasks.values().map(|n| i64::from(*n)).sum::<i64>() > TASKS_MAX {
            out.status
                .push(status(STATUS_INCORRECTLY_PARTITIONED_TOPICS, format!("The topology has more than {TASKS_MAX} tasks.")));
        } else {
            out.tasks = Some(tasks);
        }
    }
    out
}

/// Target active tasks: the `uniform` assignor of consumer groups, each subtopology standing for
/// a topic whose partitions are its tasks.
fn assign_active(members: &BTreeMap<String, Member>, tasks: &BTreeMap<String, i32>) -> BTreeMap<String, Tasks> {
    let ids: BTreeMap<&str, Uuid> = tasks.keys().enumerate().map(|(i, s)| (s.as_str(), Uuid::from_u128(i as u128 + 1))).collect();
    let names: BTreeMap<Uuid, &str> = ids.iter().map(|(s, u)| (*u, *s)).collect();
    let specs: TopicSpecs = tasks.iter().map(|(s, n)| (s.clone(), (ids[s.as_str()], *n))).collect();
    let all: BTreeSet<String> = tasks.keys().cloned().collect();
    let current: Vec<Assignment> = members
        .values()
        .map(|m| m.assigned.active.iter().filter_map(|(s, ps)| Some((*ids.get(s.as_str())?, ps.clone()))).collect())
        .collect();
    let specs_m: Vec<MemberSpec<'_>> =
        members.values().zip(&current).map(|(m, c)| MemberSpec { member_id: &m.id, topics: &all, current: c }).collect();
    assignor::assign(assignor::UNIFORM, &specs_m, &specs)
        .into_iter()
        .map(|(m, a)| (m, a.into_iter().filter_map(|(u, ps)| Some((names.get(&u)?.to_string(), ps))).collect()))
        .collect()
}

/// Standby tasks: `replicas` per task, on members of other processes than its active owner,
/// sticky (a member keeps a standby it has), otherwise the least loaded member.
fn assign_standby(members: &BTreeMap<String, Member>, active: &BTreeMap<String, Tasks>, replicas: u32) -> BTreeMap<String, Tasks> {
    let mut out: BTreeMap<String, Tasks> = members.keys().map(|m| (m.clone(), Tasks::new())).collect();
    if replicas == 0 {
        return out;
    }
    let mut load: BTreeMap<&str, usize> = active.iter().map(|(m, t)| (m.as_str(), t.values().map(BTreeSet::len).sum())).collect();
    for (owner, tasks) in active {
        let owner_process = members.get(owner).map(|m| m.process_id.as_str());
        for (s, ps) in tasks {
            for p in ps {
                let mut chosen: Vec<&str> = Vec::new();
                for _ in 0..replicas {
                    let candidates = members.values().filter(|m| {
                        Some(m.process_id.as_str()) != owner_process && !chosen.iter().any(|c| members[*c].process_id == m.process_id)
                    });
                    let had = |m: &Member| m.assigned.standby.get(s).is_some_and(|x| x.contains(p));
                    let min = candidates.clone().map(|m| load.get(m.id.as_str()).copied().unwrap_or(0)).min();
                    let Some(min) = min else { break };
                    let pick = candidates
                        .clone()
                        .find(|m| had(m) && load.get(m.id.as_str()).copied().unwrap_or(0) <= min + 1)
                        .or_else(|| candidates.clone().find(|m| load.get(m.id.as_str()).copied().unwrap_or(0) == min));
                    let Some(m) = pick else { break };
                    chosen.push(&m.id);
                    *load.entry(&m.id).or_default() += 1;
                    out.entry(m.id.clone()).or_default().entry(s.clone()).or_default().insert(*p);
                }
            }
        }
    }
    out
}

impl StreamsGroup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's streams group states.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.configured.tasks.is_none() {
            "NotReady"
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
    pub fn on_time(&mut self, now: Instant, topics: &dyn TopicLookup, settings: &GroupSettings) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| epochs::expired(now, m.session_deadline, m.revocation_deadline))
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            tracing::info!(member = %id, "streams group member expired or failed to revoke in time");
            self.remove(id);
        }
        if !gone.is_empty() {
            self.refresh_target(topics, settings, false);
        }
    }

    fn remove(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.target.remove(id);
            self.group_epoch = self.group_epoch.saturating_add(1);
        }
        if self.members.is_empty() {
            self.shutdown_requested = false;
        }
    }

    /// The topics the group reads (OffsetDelete refuses their offsets while it has members).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        let Some(t) = self.topology.as_ref().filter(|_| !self.members.is_empty()) else { return BTreeSet::new() };
        t.subtopologies
            .iter()
            .flat_map(|s| s.source_topics.iter().cloned().chain(s.repartition_source_topics.iter().map(|i| i.name.clone())))
            .collect()
    }

    /// The subtopologies reading `topic` (its partition p is task p of each).
    fn readers(&self, topic: &str) -> Vec<&str> {
        let Some(t) = &self.topology else { return Vec::new() };
        t.subtopologies
            .iter()
            .filter(|s| s.source_topics.iter().any(|n| n == topic) || s.repartition_source_topics.iter().any(|i| i.name == topic))
            .map(|s| s.id.as_str())
            .collect()
    }

    /// OffsetCommit and TxnOffsetCommit by a member: at its epoch anything goes; at an older
    /// epoch only partitions of active tasks it has owned since that epoch (`partitions` None:
    /// its epoch only). Admin commits (no member, epoch < 0) only into an empty group.
    pub fn validate_offset_commit(&self, member_id: &str, epoch: i32, partitions: Option<&[(String, i32)]>) -> Result<(), GroupError> {
        if epoch < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        let m = self.members.get(member_id).ok_or(GroupError::UnknownMemberId)?;
        let owned_since = |(topic, p): &(String, i32)| {
            let readers = self.readers(topic);
            !readers.is_empty() && readers.iter().all(|s| m.task_epochs.get(&(s.to_string(), *p)).is_some_and(|since| *since <= epoch))
        };
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
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, GroupError> {
        let session = Duration::from_millis(settings.consumer_session_timeout_ms.max(0) as u64);
        if req.member_epoch == LEAVE_EPOCH || req.member_epoch == STATIC_LEAVE_EPOCH {
            let id = match (&req.instance_id, req.member_id.is_empty()) {
                (Some(inst), true) => self.static_member(inst).ok_or(GroupError::UnknownMemberId)?,
                _ => req.member_id.clone(),
            };
            let m = self.members.get_mut(&id).ok_or(GroupError::UnknownMemberId)?;
            if req.member_epoch == STATIC_LEAVE_EPOCH && m.instance_id.is_some() {
                m.previous_epoch = m.epoch;
                m.epoch = STATIC_LEAVE_EPOCH;
                m.session_deadline = now + session;
            } else {
                self.remove(&id);
                self.refresh_target(topics, settings, false);
            }
            return Ok(HeartbeatResponse {
                member_id: id,
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: 0,
                status: Vec::new(),
                active: None,
                standby: None,
                warmup: None,
                create_topics: Vec::new(),
            });
        }
        if req.client_tags.as_ref().is_some_and(|t| t.len() > CLIENT_TAGS_MAX) {
            return Err(GroupError::InvalidRequest(format!("more than {CLIENT_TAGS_MAX} client tags")));
        }
        let mut bump = false;
        let joining = req.member_epoch == 0;
        if joining {
            bump = self.join(now, session, &req, settings)?;
        } else {
            if req.topology.is_some() {
                return Err(GroupError::InvalidRequest("Topology can only be provided when MemberEpoch is 0".into()));
            }
            let m = self.members.get(&req.member_id).ok_or(GroupError::UnknownMemberId)?;
            let owned_ok = req.active.as_ref().is_none_or(|o| is_subset(o, &m.assigned.active));
            if epochs::fenced(req.member_epoch, m.epoch, m.previous_epoch, owned_ok) {
                return Err(GroupError::FencedMemberEpoch);
            }
        }
        let id = req.member_id.clone();
        let Some(m) = self.members.get_mut(&id) else { return Err(GroupError::UnknownMemberId) };
        m.session_deadline = now + session;
        if req.rebalance_timeout_ms >= 0 {
            m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
        }
        if req.rack_id.is_some() {
            m.rack_id = req.rack_id.clone();
        }
        if let Some(p) = &req.process_id {
            m.process_id = p.clone();
        }
        if req.user_endpoint.is_some() {
            m.user_endpoint = req.user_endpoint.clone();
        }
        if let Some(t) = &req.client_tags {
            m.client_tags = t.clone();
        }
        m.client = req.client.clone();
        if let Some(a) = &req.active {
            m.reported.active = a.clone();
        }
        if let Some(s) = &req.standby {
            m.reported.standby = s.clone();
        }
        if let Some(w) = &req.warmup {
            m.reported.warmup = w.clone();
        }
        let member_topology_epoch = m.topology_epoch;
        if req.shutdown_application {
            self.shutdown_requested = true;
        }
        self.refresh_target(topics, settings, bump);
        let before = self.members.get(&id).map(|m| (m.epoch, m.assigned.clone()));
        self.reconcile(now, &id);
        let m = self.members.get(&id).ok_or(GroupError::UnknownMemberId)?;
        let changed = before.is_none_or(|(e, a)| e != m.epoch || a != m.assigned);
        let mut status = self.configured.status.clone();
        if let Some(t) = &self.topology
            && member_topology_epoch < t.epoch
        {
            let detail = format!("The member's topology epoch {member_topology_epoch} is older than the group's {}.", t.epoch);
            status.push(Status { code: STATUS_STALE_TOPOLOGY, detail });
        }
        if self.shutdown_requested {
            status.push(Status { code: STATUS_SHUTDOWN_APPLICATION, detail: "A member requested the application to shut down.".into() });
        }
        let send = joining || changed;
        Ok(HeartbeatResponse {
            member_id: id.clone(),
            member_epoch: m.epoch,
            heartbeat_interval_ms: settings.consumer_heartbeat_interval_ms,
            status,
            active: send.then(|| m.assigned.active.clone()),
            standby: send.then(|| m.assigned.standby.clone()),
            warmup: send.then(|| m.assigned.warmup.clone()),
            create_topics: self.configured.create.clone(),
        })
    }

    fn static_member(&self, instance: &str) -> Option<String> {
        self.members.values().find(|m| m.instance_id.as_deref() == Some(instance)).map(|m| m.id.clone())
    }

    /// A heartbeat with epoch 0: a new member, a member rejoining, or a static member replacing
    /// its earlier incarnation. True when membership or the topology changed.
    fn join(&mut self, now: Instant, session: Duration, req: &HeartbeatRequest, settings: &GroupSettings) -> Result<bool, GroupError> {
        let Some(topology) = &req.topology else {
            return Err(GroupError::InvalidRequest("Topology must be set when joining".into()));
        };
        if req.rebalance_timeout_ms < 0 {
            return Err(GroupError::InvalidRequest("RebalanceTimeoutMs must be set when joining".into()));
        }
        if req.member_id.is_empty() {
            return Err(GroupError::InvalidRequest("MemberId can't be empty".into()));
        }
        if req.process_id.as_deref().is_none_or(str::is_empty) {
            return Err(GroupError::InvalidRequest("ProcessId must be set when joining".into()));
        }
        validate_topology(topology)?;
        let id = req.member_id.clone();
        let others = self.members.keys().any(|k| *k != id);
        let mut changed = false;
        match &self.topology {
            Some(t) if t == topology => {}
            Some(t) if others && topology.epoch <= t.epoch => {
                if topology.epoch == t.epoch {
                    return Err(bad(format!("the topology differs from the group's at the same epoch {}", t.epoch)));
                }
            }
            _ => {
                self.topology = Some(topology.clone());
                changed = true;
            }
        }
        if let Some(inst) = &req.instance_id
            && let Some(old) = self.static_member(inst)
            && old != id
        {
            let Some(prev) = self.members.get(&old) else { return Err(GroupError::UnknownMemberId) };
            if prev.epoch != STATIC_LEAVE_EPOCH {
                return Err(GroupError::UnreleasedInstanceId);
            }
            if let Some(mut m) = self.members.remove(&old) {
                m.id = id.clone();
                m.epoch = m.previous_epoch.max(0);
                m.topology_epoch = topology.epoch;
                if let Some(t) = self.target.remove(&old) {
                    self.target.insert(id.clone(), t);
                }
                self.members.insert(id, m);
            }
            return Ok(changed);
        }
        if let Some(m) = self.members.get_mut(&id) {
            // Rejoining (after an error): it owns nothing any more.
            m.assigned = Owned::default();
            m.pending_revocation = Owned::default();
            m.reported = Owned::default();
            m.task_epochs.clear();
            m.revocation_deadline = None;
            m.epoch = 0;
            m.topology_epoch = topology.epoch;
            return Ok(changed);
        }
        if self.members.len() >= settings.max_members_per_group {
            return Err(GroupError::GroupMaxSizeReached);
        }
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: req.instance_id.clone(),
                rack_id: None,
                client: req.client.clone(),
                rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                topology_epoch: topology.epoch,
                process_id: String::new(),
                user_endpoint: None,
                client_tags: Vec::new(),
                epoch: 0,
                previous_epoch: 0,
                assigned: Owned::default(),
                pending_revocation: Owned::default(),
                reported: Owned::default(),
                task_epochs: BTreeMap::new(),
                session_deadline: now + session,
                revocation_deadline: None,
            },
        );
        Ok(true)
    }

    /// Configures the topology again; bumps the group epoch once when `changed` (membership,
    /// topology) or the tasks changed, and computes the target assignment of a new epoch.
    fn refresh_target(&mut self, topics: &dyn TopicLookup, settings: &GroupSettings, changed: bool) {
        let configured = self.topology.as_ref().map(|t| configure(t, topics)).unwrap_or_default();
        if changed || configured.tasks != self.configured.tasks {
            self.group_epoch = self.group_epoch.saturating_add(1);
        }
        self.configured = configured;
        if self.group_epoch <= self.assignment_epoch {
            return;
        }
        let active = match &self.configured.tasks {
            Some(tasks) => assign_active(&self.members, tasks),
            None => BTreeMap::new(),
        };
        let mut standby = assign_standby(&self.members, &active, settings.streams_num_standby_replicas);
        self.target = self
            .members
            .keys()
            .map(|m| {
                let owned = Owned {
                    active: active.get(m).cloned().unwrap_or_default(),
                    standby: standby.remove(m).unwrap_or_default(),
                    warmup: Tasks::new(),
                };
                (m.clone(), owned)
            })
            .collect();
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member towards its target (see the module doc).
    fn reconcile(&mut self, now: Instant, id: &str) {
        let target = self.target.get(id).cloned().unwrap_or_default();
        // Active tasks other members still hold (assigned or not yet revoked).
        let mut held = Tasks::new();
        for (other, m) in &self.members {
            if other != id {
                for (s, ps) in m.assigned.active.iter().chain(m.pending_revocation.active.iter()) {
                    held.entry(s.clone()).or_default().extend(ps.iter().copied());
                }
            }
        }
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else { return };
        if m.epoch == STATIC_LEAVE_EPOCH {
            return;
        }
        if !m.pending_revocation.is_empty() {
            if m.reported.overlaps(&m.pending_revocation) {
                return;
            }
            for (s, ps) in &m.pending_revocation.active {
                for p in ps {
                    m.task_epochs.remove(&(s.clone(), *p));
                }
            }
            m.pending_revocation = Owned::default();
            m.revocation_deadline = None;
        }
        let revoke = m.assigned.minus(&target);
        if !revoke.is_empty() {
            m.assigned = m.assigned.intersect(&target);
            m.pending_revocation = revoke;
            m.revocation_deadline = Some(now + m.rebalance_timeout);
            return;
        }
        let free = minus(&minus(&target.active, &m.assigned.active), &held);
        for (s, ps) in free {
            for p in &ps {
                m.task_epochs.insert((s.clone(), *p), assignment_epoch);
            }
            m.assigned.active.entry(s).or_default().extend(ps);
        }
        m.assigned.standby = target.standby;
        m.assigned.warmup = target.warmup;
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
        }
    }

    pub fn describe(&self) -> GroupDescription {
        GroupDescription {
            state: self.state_name().to_string(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            topology: self.topology.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    member_epoch: m.epoch,
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client: m.client.clone(),
                    topology_epoch: m.topology_epoch,
                    process_id: m.process_id.clone(),
                    user_endpoint: m.user_endpoint.clone(),
                    client_tags: m.client_tags.clone(),
                    assignment: m.assigned.parts(),
                    target_assignment: self.target.get(&m.id).map(Owned::parts).unwrap_or_default(),
                })
                .collect(),
        }
    }
}
