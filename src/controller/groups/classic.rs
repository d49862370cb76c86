//! The classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) as a state machine
//! over one group, following Apache Kafka's `ClassicGroup` and its coordinator:
//!
//! ```text
//!            join (first member)            all members rejoined, or rebalance timeout
//!   Empty ----------------------> PreparingRebalance ----------------------> CompletingRebalance
//!     ^                              ^        |  no member left                  |   leader's SyncGroup
//!     +------------------------------|--------+                                  v
//!                                    +---- member joins, leaves or expires ---- Stable
//! ```
//!
//! Every method runs under the coordinator's lock, takes the current time as an argument and
//! never blocks: a JoinGroup or SyncGroup that must wait gets a `oneshot` receiver that a later
//! transition (another member's request, or a deadline seen by [`ClassicGroup::on_time`])
//! completes. Deadlines are tokio `Instant`s, so tests drive them with a paused clock.
//!
//! Must not touch: Kafka wire types (the protocol layer translates), the metadata store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{ClientInfo, GroupError, GroupSettings, JoinRequest, JoinResponse, JoinedMember, MemberSummary, SyncRequest, SyncResponse};

/// Kafka's classic group states (the names ListGroups and DescribeGroups report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// What a JoinGroup or SyncGroup gets: an answer now, or one to wait for.
pub enum Reply<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

pub type SyncResult = Result<SyncResponse, GroupError>;

struct Member {
    id: String,
    instance_id: Option<String>,
    client: ClientInfo,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    awaiting_join: Option<oneshot::Sender<JoinResponse>>,
    awaiting_sync: Option<oneshot::Sender<SyncResult>>,
    session_deadline: Instant,
}

impl Member {
    /// Kafka keeps members alive while they wait in a JoinGroup or SyncGroup.
    fn expired(&self, now: Instant) -> bool {
        self.awaiting_join.is_none() && self.awaiting_sync.is_none() && self.session_deadline <= now
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

/// One classic group's membership state.
pub struct ClassicGroup {
    pub(super) state: ClassicState,
    pub(super) generation: i32,
    pub(super) protocol_type: Option<String>,
    pub(super) protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// group.instance.id -> member id.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, waiting for the member's second JoinGroup.
    pending: HashMap<String, Instant>,
    join_deadline: Option<Instant>,
    /// Set while the first rebalance of an empty group waits for more members; the time it may
    /// still be extended by.
    initial_delay_remaining: Option<Duration>,
    new_member_added: bool,
}

/// A member id: the client's id (or the static instance id) and a random suffix, as in Kafka.
pub fn new_member_id(prefix: &str, random: uuid::Uuid) -> String {
    format!("{prefix}-{random}")
}

impl ClassicGroup {
    pub fn new() -> Self {
        Self {
            state: ClassicState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            join_deadline: None,
            initial_delay_remaining: None,
            new_member_added: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn has_member(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default()
    }

    /// Kafka's `validateMember`: a static member must present the member id its instance id
    /// currently maps to.
    pub fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), GroupError> {
        match instance_id {
            Some(inst) => match self.static_members.get(inst) {
                None => Err(GroupError::UnknownMemberId),
                Some(id) if id != member_id => Err(GroupError::FencedInstanceId),
                Some(_) => Ok(()),
            },
            None if self.members.contains_key(member_id) => Ok(()),
            None => Err(GroupError::UnknownMemberId),
        }
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else { return Vec::new() };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type) && {
            let candidates = self.candidate_protocols();
            protocols.iter().any(|(n, _)| candidates.contains(n))
        }
    }

    /// Each member votes for its most preferred candidate; the most votes win (ties: the
    /// candidate the first member prefers).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = candidates.iter().map(|c| (c.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n))
                && let Some(v) = votes.iter_mut().find(|(c, _)| c == name)
            {
                v.1 += 1;
            }
        }
        let mut best: Option<(String, usize)> = None;
        for (c, n) in votes {
            if best.as_ref().is_none_or(|(_, b)| n > *b) {
                best = Some((c, n));
            }
        }
        best.map(|(c, _)| c)
    }

    /// JoinGroup (the coordinator checked the group id, session timeout and group count).
    pub fn join(&mut self, now: Instant, settings: &GroupSettings, random: uuid::Uuid, req: JoinRequest) -> Reply<JoinResponse> {
        let fail = |e| Reply::Now(JoinResponse::error(req.member_id.clone(), e));
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return fail(GroupError::InconsistentGroupProtocol);
        }
        if req.member_id.is_empty() {
            if let Some(inst) = req.group_instance_id.clone() {
                if let Some(old) = self.static_members.get(&inst).cloned() {
                    let id = new_member_id(&inst, random);
                    return self.replace_static_member(now, old, id, req);
                }
                if self.members.len() + self.pending.len() >= settings.max_members_per_group {
                    return fail(GroupError::GroupMaxSizeReached);
                }
                let id = new_member_id(&inst, random);
                return self.add_member_and_rebalance(now, settings, id, req);
            }
            if self.members.len() + self.pending.len() >= settings.max_members_per_group {
                return fail(GroupError::GroupMaxSizeReached);
            }
            let id = new_member_id(&req.client.client_id, random);
            if req.require_known_member_id {
                self.pending.insert(id.clone(), now + session_timeout(&req));
                return Reply::Now(JoinResponse::error(id, GroupError::MemberIdRequired));
            }
            return self.add_member_and_rebalance(now, settings, id, req);
        }
        if self.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            return self.add_member_and_rebalance(now, settings, id, req);
        }
        if let Err(e) = self.validate_member(&req.member_id, req.group_instance_id.as_deref()) {
            return fail(e);
        }
        let id = req.member_id.clone();
        let unchanged = self.members.get(&id).is_some_and(|m| m.same_protocols(&req.protocols));
        match self.state {
            ClassicState::Empty => fail(GroupError::UnknownMemberId),
            ClassicState::PreparingRebalance => self.update_member_and_rebalance(now, settings, id, req),
            ClassicState::CompletingRebalance if unchanged => Reply::Now(self.current_join_response(&id, false)),
            ClassicState::Stable if unchanged && self.leader.as_deref() != Some(id.as_str()) => {
                Reply::Now(self.current_join_response(&id, false))
            }
            ClassicState::CompletingRebalance | ClassicState::Stable => self.update_member_and_rebalance(now, settings, id, req),
        }
    }

    /// The answer for a member of the current generation; the leader also gets every member's
    /// metadata.
    fn current_join_response(&self, member_id: &str, skip_assignment: bool) -> JoinResponse {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let is_leader = self.leader.as_deref() == Some(member_id);
        JoinResponse {
            error: None,
            member_id: member_id.to_string(),
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment: is_leader && skip_assignment,
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| JoinedMember {
                        member_id: m.id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        metadata: m.metadata(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn add_member_and_rebalance(&mut self, now: Instant, settings: &GroupSettings, id: String, req: JoinRequest) -> Reply<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if let Some(inst) = &req.group_instance_id {
            self.static_members.insert(inst.clone(), id.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: req.group_instance_id.clone(),
                client: req.client.clone(),
                session_timeout: session_timeout(&req),
                rebalance_timeout: rebalance_timeout(&req),
                protocols: req.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(tx),
                awaiting_sync: None,
                session_deadline: now + session_timeout_of(req.session_timeout_ms),
            },
        );
        self.new_member_added = true;
        self.maybe_prepare_rebalance(now, settings);
        self.try_complete_join(now);
        Reply::Wait(rx)
    }

    fn update_member_and_rebalance(&mut self, now: Instant, settings: &GroupSettings, id: String, req: JoinRequest) -> Reply<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(&id) {
            m.protocols = req.protocols.clone();
            m.session_timeout = session_timeout(&req);
            m.rebalance_timeout = rebalance_timeout(&req);
            m.client = req.client.clone();
            if let Some(old) = m.awaiting_join.replace(tx) {
                // A second JoinGroup from the same member replaces the first (Kafka answers the
                // older one with UNKNOWN_MEMBER_ID).
                let _ = old.send(JoinResponse::error(id.clone(), GroupError::UnknownMemberId));
            }
        }
        self.maybe_prepare_rebalance(now, settings);
        self.try_complete_join(now);
        Reply::Wait(rx)
    }

    /// A static member came back with an unknown member id: it takes over the old member's
    /// place (and assignment); the old member id is fenced. No rebalance when the group is
    /// stable and the selected protocol stays the same.
    fn replace_static_member(&mut self, now: Instant, old_id: String, new_id: String, req: JoinRequest) -> Reply<JoinResponse> {
        let Some(mut member) = self.members.remove(&old_id) else {
            return Reply::Now(JoinResponse::error(String::new(), GroupError::UnknownMemberId));
        };
        if let Some(tx) = member.awaiting_join.take() {
            let _ = tx.send(JoinResponse::error(old_id.clone(), GroupError::FencedInstanceId));
        }
        if let Some(tx) = member.awaiting_sync.take() {
            let _ = tx.send(Err(GroupError::FencedInstanceId));
        }
        member.protocols = req.protocols.clone();
        member.id = new_id.clone();
        member.client = req.client.clone();
        member.session_timeout = session_timeout(&req);
        member.rebalance_timeout = rebalance_timeout(&req);
        member.session_deadline = now + member.session_timeout;
        self.members.insert(new_id.clone(), member);
        if let Some(inst) = &req.group_instance_id {
            self.static_members.insert(inst.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        match self.state {
            ClassicState::Stable if self.select_protocol() == self.protocol_name => Reply::Now(self.current_join_response(&new_id, true)),
            ClassicState::Stable => self.rejoin_replaced(now, new_id, true),
            ClassicState::CompletingRebalance => self.rejoin_replaced(now, new_id, true),
            ClassicState::PreparingRebalance | ClassicState::Empty => self.rejoin_replaced(now, new_id, false),
        }
    }

    fn rejoin_replaced(&mut self, now: Instant, id: String, rebalance: bool) -> Reply<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(&id) {
            m.awaiting_join = Some(tx);
        }
        if rebalance {
            self.prepare_rebalance(now, None);
        }
        self.try_complete_join(now);
        Reply::Wait(rx)
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant, settings: &GroupSettings) {
        if self.state != ClassicState::PreparingRebalance {
            let delay = (self.state == ClassicState::Empty).then(|| Duration::from_millis(settings.initial_rebalance_delay_ms));
            self.prepare_rebalance(now, delay);
        }
    }

    /// Moves to PreparingRebalance: pending SyncGroups learn REBALANCE_IN_PROGRESS; the join
    /// phase ends when every member rejoined or at the deadline. An empty group's first
    /// rebalance waits `initial_delay` (extended while members keep arriving) for the others.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Option<Duration>) {
        if self.state == ClassicState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(tx) = m.awaiting_sync.take() {
                    let _ = tx.send(Err(GroupError::RebalanceInProgress));
                }
            }
        }
        self.state = ClassicState::PreparingRebalance;
        let timeout = self.rebalance_timeout();
        match initial_delay {
            Some(delay) if !delay.is_zero() => {
                self.join_deadline = Some(now + delay);
                self.initial_delay_remaining = Some(timeout.saturating_sub(delay));
            }
            _ => {
                self.join_deadline = Some(now + timeout);
                self.initial_delay_remaining = None;
            }
        }
    }

    fn all_members_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state == ClassicState::PreparingRebalance && self.initial_delay_remaining.is_none() && self.all_members_joined() {
            self.complete_join(now);
        }
    }

    /// The join phase ends: members that did not rejoin are removed, the next generation
    /// starts, every waiting JoinGroup is answered (the leader with everyone's metadata).
    fn complete_join(&mut self, now: Instant) {
        let gone: Vec<String> = self.members.values().filter(|m| m.awaiting_join.is_none()).map(|m| m.id.clone()).collect();
        for id in gone {
            self.remove_member(&id, GroupError::UnknownMemberId);
        }
        self.join_deadline = None;
        self.initial_delay_remaining = None;
        self.new_member_added = false;
        self.generation = self.generation.saturating_add(1);
        if self.members.is_empty() {
            self.state = ClassicState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = ClassicState::CompletingRebalance;
        if self.leader.as_ref().is_none_or(|l| !self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let response = self.current_join_response(&id, false);
            if let Some(m) = self.members.get_mut(&id) {
                m.session_deadline = now + m.session_timeout;
                if let Some(tx) = m.awaiting_join.take() {
                    let _ = tx.send(response);
                }
            }
        }
    }

    /// Removes a member, answering whatever it waits for with `error`.
    fn remove_member(&mut self, id: &str, error: GroupError) {
        let Some(mut m) = self.members.remove(id) else { return };
        if let Some(tx) = m.awaiting_join.take() {
            let _ = tx.send(JoinResponse::error(id.to_string(), error.clone()));
        }
        if let Some(tx) = m.awaiting_sync.take() {
            let _ = tx.send(Err(error));
        }
        if let Some(inst) = &m.instance_id
            && self.static_members.get(inst).map(String::as_str) == Some(id)
        {
            self.static_members.remove(inst);
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    /// A member left or expired: the others rebalance.
    fn remove_member_and_update(&mut self, now: Instant, id: &str) {
        self.remove_member(id, GroupError::UnknownMemberId);
        match self.state {
            ClassicState::Stable | ClassicState::CompletingRebalance => {
                self.prepare_rebalance(now, None);
                self.try_complete_join(now);
            }
            ClassicState::PreparingRebalance => self.try_complete_join(now),
            ClassicState::Empty => {}
        }
    }

    pub fn sync(&mut self, now: Instant, req: SyncRequest) -> Reply<SyncResult> {
        if let Err(e) = self.validate_member(&req.member_id, req.group_instance_id.as_deref()) {
            return Reply::Now(Err(e));
        }
        if req.generation_id != self.generation {
            return Reply::Now(Err(GroupError::IllegalGeneration));
        }
        if req.protocol_type.as_ref().is_some_and(|t| Some(t) != self.protocol_type.as_ref())
            || req.protocol_name.as_ref().is_some_and(|n| Some(n) != self.protocol_name.as_ref())
        {
            return Reply::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        match self.state {
            ClassicState::Empty => Reply::Now(Err(GroupError::UnknownMemberId)),
            ClassicState::PreparingRebalance => Reply::Now(Err(GroupError::RebalanceInProgress)),
            ClassicState::Stable => {
                let response = self.sync_response(&req.member_id);
                if let Some(m) = self.members.get_mut(&req.member_id) {
                    m.session_deadline = now + m.session_timeout;
                }
                Reply::Now(Ok(response))
            }
            ClassicState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(&req.member_id) {
                    m.session_deadline = now + m.session_timeout;
                    m.awaiting_sync = Some(tx);
                }
                if self.leader.as_deref() == Some(req.member_id.as_str()) {
                    let mut given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    self.state = ClassicState::Stable;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let response = self.sync_response(&id);
                        if let Some(tx) = self.members.get_mut(&id).and_then(|m| m.awaiting_sync.take()) {
                            let _ = tx.send(Ok(response));
                        }
                    }
                }
                Reply::Wait(rx)
            }
        }
    }

    fn sync_response(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
        }
    }

    pub fn heartbeat(&mut self, now: Instant, member_id: &str, instance_id: Option<&str>, generation: i32) -> Result<(), GroupError> {
        self.validate_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline = now + m.session_timeout;
        }
        match self.state {
            ClassicState::Empty => Err(GroupError::UnknownMemberId),
            ClassicState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            ClassicState::CompletingRebalance | ClassicState::Stable => Ok(()),
        }
    }

    /// LeaveGroup for one member identity. An empty member id with an instance id removes that
    /// static member (the admin client's way).
    pub fn leave(&mut self, now: Instant, member_id: &str, instance_id: Option<&str>) -> Result<(), GroupError> {
        let id = match (member_id.is_empty(), instance_id) {
            (true, Some(inst)) => self.static_members.get(inst).cloned().ok_or(GroupError::UnknownMemberId)?,
            _ => {
                if instance_id.is_none() && self.pending.remove(member_id).is_some() {
                    self.try_complete_join(now);
                    return Ok(());
                }
                self.validate_member(member_id, instance_id)?;
                member_id.to_string()
            }
        };
        self.remove_member_and_update(now, &id);
        Ok(())
    }

    /// Kafka's `validateOffsetCommit` for classic groups. Refreshes the member's session.
    pub fn validate_offset_commit(
        &mut self,
        now: Instant,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        if generation < 0 && self.state == ClassicState::Empty {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.validate_member(member_id, instance_id)?;
            if generation != self.generation {
                return Err(GroupError::IllegalGeneration);
            }
        } else if self.state != ClassicState::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        if self.state == ClassicState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline = now + m.session_timeout;
        }
        Ok(())
    }

    /// Applies every deadline that passed: expired pending ids and members, the end of the
    /// join phase.
    pub fn on_time(&mut self, now: Instant, settings: &GroupSettings) {
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        if self.pending.len() != before {
            self.try_complete_join(now);
        }
        let expired: Vec<String> = self.members.values().filter(|m| m.expired(now)).map(|m| m.id.clone()).collect();
        for id in expired {
            tracing::info!(member = %id, "group member session expired");
            self.remove_member_and_update(now, &id);
        }
        if self.state == ClassicState::PreparingRebalance && self.join_deadline.is_some_and(|d| d <= now) {
            match self.initial_delay_remaining {
                Some(remaining) if self.new_member_added && !remaining.is_zero() => {
                    let delay = Duration::from_millis(settings.initial_rebalance_delay_ms).min(remaining);
                    self.initial_delay_remaining = Some(remaining - delay);
                    self.new_member_added = false;
                    self.join_deadline = Some(now + delay);
                }
                _ => self.complete_join(now),
            }
        }
    }

    /// The earliest deadline [`ClassicGroup::on_time`] must see.
    pub fn next_deadline(&self) -> Option<Instant> {
        let members = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none())
            .map(|m| m.session_deadline);
        let join = if self.state == ClassicState::PreparingRebalance { self.join_deadline } else { None };
        members.chain(self.pending.values().copied()).chain(join).min()
    }

    /// DescribeGroups' member list: metadata and assignments only when stable, as in Kafka.
    pub fn members(&self) -> Vec<MemberSummary> {
        let stable = self.state == ClassicState::Stable;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| MemberSummary {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client.client_id.clone(),
                client_host: m.client.client_host.clone(),
                metadata: if stable { m.metadata(&protocol) } else { Bytes::new() },
                assignment: if stable { m.assignment.clone() } else { Bytes::new() },
            })
            .collect()
    }

    /// The selected protocol's metadata of every member (OffsetDelete reads subscriptions).
    pub fn member_metadata(&self) -> Vec<Bytes> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members.values().map(|m| m.metadata(&protocol)).collect()
    }

    /// Answers every waiting JoinGroup and SyncGroup with `error`; members stay.
    pub fn abort_waiters(&mut self, error: GroupError) {
        for m in self.members.values_mut() {
            if let Some(tx) = m.awaiting_join.take() {
                let _ = tx.send(JoinResponse::error(m.id.clone(), error.clone()));
            }
            if let Some(tx) = m.awaiting_sync.take() {
                let _ = tx.send(Err(error.clone()));
            }
        }
    }
}

impl Default for ClassicGroup {
    fn default() -> Self {
        Self::new()
    }
}

fn session_timeout_of(ms: i32) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

fn session_timeout(req: &JoinRequest) -> Duration {
    session_timeout_of(req.session_timeout_ms)
}

/// JoinGroup v0 has no rebalance timeout: Kafka uses the session timeout.
fn rebalance_timeout(req: &JoinRequest) -> Duration {
    if req.rebalance_timeout_ms > 0 { Duration::from_millis(req.rebalance_timeout_ms as u64) } else { session_timeout(req) }
}
