//! KIP-848 consumer groups (ConsumerGroupHeartbeat): not built yet; every heartbeat is refused.

use std::collections::BTreeSet;

use tokio::time::Instant;

use super::{GroupError, GroupSettings, TopicLookup};
use crate::clock::Entropy;

#[derive(Debug, Clone)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_epoch: i32,
}

#[derive(Debug, Clone)]
pub struct HeartbeatResponse {}

#[derive(Debug, Clone)]
pub struct GroupDescription {}

#[derive(Default)]
pub struct ConsumerGroup {}

impl ConsumerGroup {
    pub fn new() -> Self {
        Self {}
    }
    pub fn is_empty(&self) -> bool {
        true
    }
    pub fn next_deadline(&self) -> Option<Instant> {
        None
    }
    pub fn on_time(&mut self, _now: Instant, _topics: &dyn TopicLookup) {}
    pub fn state_name(&self) -> &'static str {
        "Empty"
    }
    pub fn validate_offset_commit(&self, _member_id: &str, _epoch: i32, _api_version: i16) -> Result<(), GroupError> {
        Ok(())
    }
    pub fn validate_offset_fetch(&self, _member_id: &str, _epoch: i32) -> Result<(), GroupError> {
        Ok(())
    }
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }
    pub fn heartbeat(
        &mut self,
        _now: Instant,
        _settings: &GroupSettings,
        _topics: &dyn TopicLookup,
        _entropy: &dyn Entropy,
        _req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, GroupError> {
        Err(GroupError::UnsupportedVersion("KIP-848 groups are not built yet".into()))
    }
    pub fn describe(&self, _topics: &dyn TopicLookup) -> GroupDescription {
        GroupDescription {}
    }
}
