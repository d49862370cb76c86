//! Share groups' membership (KIP-932): ShareGroupHeartbeat with server-side assignment.
//!
//! Members of a share group may share partitions, so an assignment never has to be revoked
//! before it moves: the group has an epoch, bumped whenever membership, subscriptions or the
//! partition counts of subscribed topics change, and every member gets the target assignment
//! of the latest epoch on its next heartbeat. The assignment is Kafka's "simple" one: with as
//! many members as partitions or fewer, each partition goes to one member (round robin over
//! the sorted partitions); with more members, every member gets a partition and partitions
//! are shared as evenly as possible. Which records a member gets is decided per fetch by the
//! share-partitions ([`super::share_partition`]), not here.
//!
//! Members whose session expires are removed; the coordinator then releases the records they
//! held. Must not touch: Kafka wire types, the store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::assignor::TopicSpecs;
use super::{GroupSettings, TopicLookup};
use crate::api::groups::{Assignment, ClientInfo, GroupError};
use crate::api::share::{GroupDescription, HeartbeatRequest, HeartbeatResponse, MemberDescription};
use crate::clock::Entropy;

/// Epoch -1: the member leaves.
pub const LEAVE_EPOCH: i32 = -1;
/// Kafka's assignor name for share groups.
pub const SIMPLE: &str = "simple";

struct Member {
    id: String,
    rack_id: Option<String>,
    client: ClientInfo,
    topics: BTreeSet<String>,
    epoch: i32,
    assigned: Assignment,
    session_deadline: Instant,
}

#[derive(Default)]
pub struct ShareGroup {
    group_epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Assignment>,
    /// The subscribed topics' ids and partition counts the target was computed from.
    topics: TopicSpecs,
}

/// Kafka's simple share assignment (see the module doc); `members` sorted by id.
pub fn assign(members: &[(&str, &BTreeSet<String>)], topics: &TopicSpecs) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members.iter().map(|(m, _)| (m.to_string(), Assignment::new())).collect();
    for (name, (id, count)) in topics {
        let subscribed: Vec<&str> = members.iter().filter(|(_, t)| t.contains(name)).map(|(m, _)| *m).collect();
        if subscribed.is_empty() || *count <= 0 {
            continue;
        }
        let n = subscribed.len();
        let partitions = *count as usize;
        for i in 0..n.max(partitions) {
            let (m, p) = (subscribed[i % n], (i % partitions) as i32);
            if let Some(a) = out.get_mut(m) {
                a.entry(*id).or_default().insert(p);
            }
        }
    }
    out
}

impl ShareGroup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's share group states.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() { "Empty" } else { "Stable" }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.members.values().map(|m| m.session_deadline).min()
    }

    pub fn is_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.topics.iter().cloned()).collect()
    }

    /// Every partition some member is assigned.
    pub fn assigned_partitions(&self) -> BTreeSet<(Uuid, i32)> {
        self.target.values().flat_map(|a| a.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))).collect()
    }

    /// Removes members whose session expired; returns their ids.
    pub fn on_time(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self.members.values().filter(|m| m.session_deadline <= now).map(|m| m.id.clone()).collect();
        for id in &gone {
            tracing::info!(member = %id, "share group member expired");
            self.remove(id);
        }
        gone
    }

    fn remove(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.target.remove(id);
            self.group_epoch = self.group_epoch.saturating_add(1);
        }
    }

    /// ShareGroupHeartbeat. A leaving member's id is in the answer; the caller releases its records.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        settings: &GroupSettings,
        topics: &dyn TopicLookup,
        entropy: &dyn Entropy,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, GroupError> {
        let session = Duration::from_millis(settings.share_session_timeout_ms.max(0) as u64);
        if req.member_epoch == LEAVE_EPOCH {
            if !self.members.contains_key(&req.member_id) {
                return Err(GroupError::UnknownMemberId);
            }
            self.remove(&req.member_id);
            return Ok(HeartbeatResponse {
                member_id: req.member_id,
                member_epoch: LEAVE_EPOCH,
                heartbeat_interval_ms: 0,
                assignment: None,
            });
        }
        let mut bump = false;
        let member_id = if req.member_epoch == 0 {
            let Some(names) = &req.subscribed_topic_names else {
                return Err(GroupError::InvalidRequest("SubscribedTopicNames must be set when joining".into()));
            };
            if names.is_empty() {
                return Err(GroupError::InvalidRequest("SubscribedTopicNames must not be empty when joining".into()));
            }
            let id = if req.member_id.is_empty() { entropy.uuid().to_string() } else { req.member_id.clone() };
            if !self.members.contains_key(&id) {
                if self.members.len() >= settings.max_members_per_group {
                    return Err(GroupError::GroupMaxSizeReached);
                }
                self.members.insert(
                    id.clone(),
                    Member {
                        id: id.clone(),
                        rack_id: None,
                        client: req.client.clone(),
                        topics: BTreeSet::new(),
                        epoch: 0,
                        assigned: Assignment::new(),
                        session_deadline: now + session,
                    },
                );
                bump = true;
            }
            id
        } else if req.member_epoch < 0 {
            return Err(GroupError::InvalidRequest(format!("member epoch {} is not -1, 0 or positive", req.member_epoch)));
        } else {
            let m = self.members.get(&req.member_id).ok_or(GroupError::UnknownMemberId)?;
            if req.member_epoch > m.epoch {
                return Err(GroupError::FencedMemberEpoch);
            }
            req.member_id.clone()
        };
        let m = self.members.get_mut(&member_id).ok_or(GroupError::UnknownMemberId)?;
        m.session_deadline = now + session;
        if req.rack_id.is_some() {
            m.rack_id = req.rack_id.clone();
        }
        m.client = req.client.clone();
        if let Some(names) = &req.subscribed_topic_names {
            let names: BTreeSet<String> = names.iter().cloned().collect();
            if names != m.topics {
                m.topics = names;
                bump = true;
            }
        }
        self.refresh_target(topics, bump);
        let epoch = self.assignment_epoch;
        let target = self.target.get(&member_id).cloned().unwrap_or_default();
        let m = self.members.get_mut(&member_id).ok_or(GroupError::UnknownMemberId)?;
        let changed = m.epoch != epoch || m.assigned != target;
        m.epoch = epoch;
        m.assigned = target;
        Ok(HeartbeatResponse {
            member_id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: settings.share_heartbeat_interval_ms,
            assignment: (changed || req.member_epoch == 0).then(|| m.assigned.clone()),
        })
    }

    /// Recomputes the target when the group changed or a subscribed topic's partitions did.
    fn refresh_target(&mut self, topics: &dyn TopicLookup, bump: bool) {
        let specs: TopicSpecs = self
            .subscribed_topics()
            .into_iter()
            .filter_map(|name| topics.by_name(&name).map(|t| (name, (t.id, t.partitions))))
            .collect();
        if !bump && specs == self.topics && self.group_epoch == self.assignment_epoch {
            return;
        }
        if bump || specs != self.topics {
            self.group_epoch = self.group_epoch.saturating_add(1);
        }
        let members: Vec<(&str, &BTreeSet<String>)> = self.members.values().map(|m| (m.id.as_str(), &m.topics)).collect();
        self.target = assign(&members, &specs);
        self.topics = specs;
        self.assignment_epoch = self.group_epoch;
    }

    pub fn describe(&self, topics: &dyn TopicLookup) -> GroupDescription {
        let named = |a: &Assignment| super::named_assignment(a, topics);
        GroupDescription {
            state: self.state_name().to_string(),
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            assignor_name: SIMPLE.to_string(),
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client: m.client.clone(),
                    subscribed_topic_names: m.topics.iter().cloned().collect(),
                    assignment: named(&m.assigned),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(a: &Assignment) -> Vec<i32> {
        a.values().flat_map(|ps| ps.iter().copied()).collect()
    }

    #[test]
    fn the_simple_assignment_spreads_and_shares() {
        let id = Uuid::from_u128(7);
        let t: BTreeSet<String> = ["t".to_string()].into();
        let topics: TopicSpecs = [("t".to_string(), (id, 4))].into();
        let two = assign(&[("a", &t), ("b", &t)], &topics);
        assert_eq!((parts(&two["a"]), parts(&two["b"])), (vec![0, 2], vec![1, 3]));
        let one: TopicSpecs = [("t".to_string(), (id, 1))].into();
        let three = assign(&[("a", &t), ("b", &t), ("c", &t)], &one);
        assert!(three.values().all(|a| parts(a) == vec![0]), "three members share the one partition");
        let other: BTreeSet<String> = ["u".to_string()].into();
        assert!(assign(&[("a", &other)], &topics)["a"].is_empty());
    }
}
