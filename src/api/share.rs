//! Share groups (KIP-932) as agents and the controller exchange them: membership
//! (ShareGroupHeartbeat, ShareGroupDescribe), record acquisition and acknowledgement (ShareFetch,
//! ShareAcknowledge), and the share-group offset admin calls. The coordinator is
//! `controller::groups` (membership in `share`, delivery state in `share_partition`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::groups::{Assignment, ClientInfo, GroupError};

/// ShareGroupHeartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    /// 0: join; -1: leave.
    pub member_epoch: i32,
    pub rack_id: Option<String>,
    /// `None`: unchanged.
    pub subscribed_topic_names: Option<Vec<String>>,
    pub client: ClientInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed, and on a join.
    #[serde(with = "crate::api::serde_with::assignment")]
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client: ClientInfo,
    pub subscribed_topic_names: Vec<String>,
    /// (topic id, topic name, partitions).
    #[serde(with = "crate::api::serde_with::named_uuid_parts")]
    pub assignment: Vec<(Uuid, String, Vec<i32>)>,
}

/// ShareGroupDescribe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    pub state: String,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor_name: String,
    pub members: Vec<MemberDescription>,
}

/// One acknowledgement batch: one type for the range, or one per offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub types: Vec<i8>,
}

/// A range of records acquired for a member, all delivered `delivery_count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquired {
    pub first_offset: i64,
    pub last_offset: i64,
    pub delivery_count: i16,
}

/// One partition of a [`RecordsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRequest {
    pub topic_id: Uuid,
    pub partition: i32,
    /// Applied before anything is acquired.
    pub acks: Vec<AckBatch>,
    /// Whether to acquire records (ShareFetch) or only acknowledge (ShareAcknowledge).
    pub acquire: bool,
}

/// ShareFetch and ShareAcknowledge, as the controller sees them: acknowledge, then acquire up
/// to `max_records` records over all the partitions, for `member_id` of `group_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsRequest {
    pub group_id: String,
    pub member_id: String,
    pub max_records: u32,
    pub partitions: Vec<PartitionRequest>,
    /// Records acquired earlier that the agent could not send (its answer was full): given
    /// back without counting the delivery. (topic id, partition, first, last).
    #[serde(default)]
    pub unsent: Vec<(Uuid, i32, i64, i64)>,
}

/// One partition's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAnswer {
    pub topic_id: Uuid,
    pub partition: i32,
    /// The partition failed as a whole (unknown partition, store failure).
    pub error: Option<GroupError>,
    /// The first acknowledgement that failed (the others were applied).
    pub ack_error: Option<GroupError>,
    pub acquired: Vec<Acquired>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsAnswer {
    pub partitions: Vec<PartitionAnswer>,
    /// The group's record lock duration (ShareFetch's `AcquisitionLockTimeoutMs`).
    pub lock_duration_ms: i32,
}

/// A share-partition's start offset as DescribeShareGroupOffsets reports it (`None`: the
/// group has no state for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartOffset {
    pub topic: String,
    pub partition: i32,
    pub start_offset: Option<i64>,
    /// Records in flight that are already done (Kafka's lag leaves them out).
    pub done_in_window: i64,
}
