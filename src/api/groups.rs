//! The consumer group calls' arguments and replies (the coordinator is `controller::groups`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Group failures: each is exactly one Kafka error code (`protocol::error::group_code`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum GroupError {
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("session timeout outside the broker's limits")]
    InvalidSessionTimeout,
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("member id required: rejoin with the member id in this response")]
    MemberIdRequired,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("rebalance in progress")]
    RebalanceInProgress,
    #[error("the static member's instance id is used by a newer member")]
    FencedInstanceId,
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    #[error("group is full")]
    GroupMaxSizeReached,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("group is not empty")]
    NonEmptyGroup,
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("offset metadata too large")]
    OffsetMetadataTooLarge,
    #[error("stale member epoch")]
    StaleMemberEpoch,
    #[error("fenced member epoch")]
    FencedMemberEpoch,
    #[error("unsupported assignor {0}")]
    UnsupportedAssignor(String),
    #[error("instance id is still used by another member")]
    UnreleasedInstanceId,
    #[error("unsupported version: {0}")]
    UnsupportedVersion(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A subscription's regular expression does not compile (or is too large).
    #[error("invalid regular expression: {0}")]
    InvalidRegularExpression(String),
    /// A streams group member sent a topology that cannot be run (KIP-1071).
    #[error("invalid topology: {0}")]
    StreamsInvalidTopology(String),
    /// The coordinator holds `max_groups` groups; retriable.
    #[error("too many groups")]
    TooManyGroups,
    /// The coordinator is shutting down: the client finds it again (after the restart).
    #[error("this coordinator is shutting down")]
    NotCoordinator,
    /// A share group acknowledgement of a record the member does not hold.
    #[error("invalid record state: {0}")]
    InvalidRecordState(String),
    /// A GROUP config resource's config is unknown or out of bounds.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The metadata store failed or the group went away mid-request; retriable.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}

/// Who sent a request (DescribeGroups reports it; member ids start with the client id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub session_timeout_ms: i32,
    /// 0 or less: the session timeout (JoinGroup v0).
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    #[serde(with = "crate::api::serde_with::named_bytes")]
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and its id.
    pub require_known_member_id: bool,
    pub client: ClientInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    #[serde(with = "crate::api::serde_with::hex_bytes")]
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub member_id: String,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    /// Only the leader gets the members.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    pub fn error(member_id: String, e: GroupError) -> Self {
        Self {
            error: Some(e),
            member_id,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            skip_assignment: false,
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    #[serde(with = "crate::api::serde_with::named_bytes")]
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    #[serde(with = "crate::api::serde_with::hex_bytes")]
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    #[serde(with = "crate::api::serde_with::hex_bytes")]
    pub metadata: Bytes,
    #[serde(with = "crate::api::serde_with::hex_bytes")]
    pub assignment: Bytes,
}

/// A classic group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    pub state: String,
    pub protocol_type: String,
    pub protocol_data: String,
    pub members: Vec<MemberSummary>,
}

/// One ListGroups entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
    /// "classic", "consumer" or "streams".
    pub group_type: String,
}

/// One partition's offset to commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    /// Null metadata is stored as "", as in Kafka.
    pub metadata: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    pub generation_id_or_member_epoch: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub api_version: i16,
    pub offsets: Vec<CommitOffset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

/// A (topic name, partition) pair.
pub type TopicPartition = (String, i32);

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// KIP-848 consumer groups (ConsumerGroupHeartbeat, ConsumerGroupDescribe).
pub mod consumer {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use super::{Assignment, ClientInfo};

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct HeartbeatRequest {
        pub group_id: String,
        pub member_id: String,
        pub member_epoch: i32,
        pub instance_id: Option<String>,
        pub rack_id: Option<String>,
        /// -1: unchanged.
        pub rebalance_timeout_ms: i32,
        /// `None`: unchanged.
        pub subscribed_topic_names: Option<Vec<String>>,
        /// RE2 syntax, matched against whole topic names. `None`: unchanged; empty: none.
        pub subscribed_topic_regex: Option<String>,
        pub server_assignor: Option<String>,
        /// The partitions the member owns (`None`: unchanged).
        #[serde(with = "crate::api::serde_with::assignment")]
        pub owned: Option<Assignment>,
        pub api_version: i16,
        pub client: ClientInfo,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HeartbeatResponse {
        pub member_id: String,
        pub member_epoch: i32,
        pub heartbeat_interval_ms: i32,
        /// Sent when it changed or the request was a full one.
        #[serde(with = "crate::api::serde_with::assignment")]
        pub assignment: Option<Assignment>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MemberDescription {
        pub member_id: String,
        pub instance_id: Option<String>,
        pub rack_id: Option<String>,
        pub member_epoch: i32,
        pub client: ClientInfo,
        pub subscribed_topic_names: Vec<String>,
        pub subscribed_topic_regex: Option<String>,
        /// (topic id, topic name, partitions).
        #[serde(with = "crate::api::serde_with::named_uuid_parts")]
        pub assignment: Vec<(Uuid, String, Vec<i32>)>,
        #[serde(with = "crate::api::serde_with::named_uuid_parts")]
        pub target_assignment: Vec<(Uuid, String, Vec<i32>)>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GroupDescription {
        pub state: String,
        pub group_epoch: i32,
        pub assignment_epoch: i32,
        pub assignor_name: String,
        pub members: Vec<MemberDescription>,
    }
}

/// KIP-1071 streams groups (StreamsGroupHeartbeat, StreamsGroupDescribe).
pub mod streams {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::{Deserialize, Serialize};

    use super::ClientInfo;

    /// Tasks by subtopology id: the partitions (task numbers) of each.
    pub type Tasks = BTreeMap<String, BTreeSet<i32>>;

    /// An internal topic of a topology (a repartition source or a changelog topic).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TopicInfo {
        pub name: String,
        /// 0: derived from the source topics.
        pub partitions: i32,
        /// 0: the default.
        pub replication_factor: i16,
        pub configs: Vec<(String, String)>,
    }

    /// Indexes into a subtopology's source topics, regexes and repartition source topics.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CopartitionGroup {
        pub source_topics: Vec<i16>,
        pub source_topic_regex: Vec<i16>,
        pub repartition_source_topics: Vec<i16>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Subtopology {
        pub id: String,
        pub source_topics: Vec<String>,
        pub source_topic_regex: Vec<String>,
        pub changelog_topics: Vec<TopicInfo>,
        pub repartition_sink_topics: Vec<String>,
        pub repartition_source_topics: Vec<TopicInfo>,
        pub copartition_groups: Vec<CopartitionGroup>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Topology {
        pub epoch: i32,
        pub subtopologies: Vec<Subtopology>,
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct HeartbeatRequest {
        pub group_id: String,
        pub member_id: String,
        pub member_epoch: i32,
        pub instance_id: Option<String>,
        pub rack_id: Option<String>,
        /// -1: unchanged.
        pub rebalance_timeout_ms: i32,
        /// Sent when joining (epoch 0) only.
        pub topology: Option<Topology>,
        /// The tasks the member owns (`None`: unchanged).
        pub active: Option<Tasks>,
        pub standby: Option<Tasks>,
        pub warmup: Option<Tasks>,
        pub process_id: Option<String>,
        /// Interactive queries endpoint (host, port).
        pub user_endpoint: Option<(String, u16)>,
        pub client_tags: Option<Vec<(String, String)>>,
        pub shutdown_application: bool,
        pub api_version: i16,
        pub client: ClientInfo,
    }

    /// Kafka's heartbeat status codes.
    pub const STATUS_STALE_TOPOLOGY: i8 = 0;
    pub const STATUS_MISSING_SOURCE_TOPICS: i8 = 1;
    pub const STATUS_INCORRECTLY_PARTITIONED_TOPICS: i8 = 2;
    pub const STATUS_MISSING_INTERNAL_TOPICS: i8 = 3;
    pub const STATUS_SHUTDOWN_APPLICATION: i8 = 4;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Status {
        pub code: i8,
        pub detail: String,
    }

    /// An internal topic the agent creates for the group (as Kafka's broker does on a
    /// heartbeat that finds it missing).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TopicToCreate {
        pub name: String,
        pub partitions: i32,
        pub configs: Vec<(String, String)>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HeartbeatResponse {
        pub member_id: String,
        pub member_epoch: i32,
        pub heartbeat_interval_ms: i32,
        pub status: Vec<Status>,
        /// Sent when they changed or the request was a full one.
        pub active: Option<Tasks>,
        pub standby: Option<Tasks>,
        pub warmup: Option<Tasks>,
        pub create_topics: Vec<TopicToCreate>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MemberDescription {
        pub member_id: String,
        pub member_epoch: i32,
        pub instance_id: Option<String>,
        pub rack_id: Option<String>,
        pub client: ClientInfo,
        pub topology_epoch: i32,
        pub process_id: String,
        pub user_endpoint: Option<(String, u16)>,
        pub client_tags: Vec<(String, String)>,
        /// (active, standby, warmup).
        pub assignment: (Tasks, Tasks, Tasks),
        pub target_assignment: (Tasks, Tasks, Tasks),
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GroupDescription {
        pub state: String,
        pub group_epoch: i32,
        pub assignment_epoch: i32,
        pub topology: Option<Topology>,
        pub members: Vec<MemberDescription>,
    }
}
