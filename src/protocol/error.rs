//! The one place where internal errors become Kafka error codes.

use kafka_protocol::error::ResponseError as K;

use crate::agent::AgentError;
use crate::api::ControllerError;
use crate::api::groups::GroupError;
use crate::format::records::RecordsError;

pub fn controller_code(e: &ControllerError) -> i16 {
    match e {
        ControllerError::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ControllerError::UnknownTopicId => K::UnknownTopicId,
        ControllerError::TopicAlreadyExists(_) => K::TopicAlreadyExists,
        ControllerError::InvalidTopicName(_) => K::InvalidTopicException,
        ControllerError::InvalidPartitions(_) => K::InvalidPartitions,
        ControllerError::InvalidReplicationFactor(_) => K::InvalidReplicationFactor,
        ControllerError::InvalidReplicaAssignment(_) => K::InvalidReplicaAssignment,
        ControllerError::InvalidConfig(_) => K::InvalidConfig,
        ControllerError::PolicyViolation(_) => K::PolicyViolation,
        ControllerError::InvalidRequest(_) => K::InvalidRequest,
        ControllerError::OutOfOrderSequence(_) => K::OutOfOrderSequenceNumber,
        ControllerError::InvalidProducerEpoch(_) => K::InvalidProducerEpoch,
        ControllerError::ProducerFenced(_) => K::ProducerFenced,
        ControllerError::InvalidProducerIdMapping(_) => K::InvalidProducerIdMapping,
        ControllerError::InvalidTxnState(_) => K::InvalidTxnState,
        ControllerError::InvalidTransactionTimeout(_) => K::InvalidTransactionTimeout,
        ControllerError::ConcurrentTransactions(_) => K::ConcurrentTransactions,
        ControllerError::OperationNotAttempted => K::OperationNotAttempted,
        // Retriable for clients: they back off and try again.
        ControllerError::Unavailable(_) => K::RequestTimedOut,
        // The agent uploads the data again; a client that waited that long may retry.
        ControllerError::ObjectCollected(_) => K::RequestTimedOut,
        ControllerError::ExtentsChanged(_) => K::RequestTimedOut,
        ControllerError::OffsetOutOfRange(_) => K::OffsetOutOfRange,
        ControllerError::ResourceNotFound(_) => K::ResourceNotFound,
        ControllerError::UnacceptableCredential(_) => K::UnacceptableCredential,
        ControllerError::DuplicateResource(_) => K::DuplicateResource,
        ControllerError::UnsupportedSaslMechanism(_) => K::UnsupportedSaslMechanism,
        // Only background jobs make leased calls; no client sees this.
        ControllerError::LeaseNotHeld(_) => K::UnknownServerError,
    }
    .code()
}

pub fn agent_code(e: &AgentError) -> i16 {
    match e {
        AgentError::Records(RecordsError::Corrupt(_)) => K::CorruptMessage.code(),
        AgentError::Records(RecordsError::Invalid(_)) => K::InvalidRecord.code(),
        AgentError::Records(RecordsError::UnsupportedCompression) => K::UnsupportedCompressionType.code(),
        AgentError::Records(RecordsError::Rejected { timestamp: true, .. }) => K::InvalidTimestamp.code(),
        AgentError::Records(RecordsError::Rejected { timestamp: false, .. }) => K::InvalidRecord.code(),
        AgentError::MessageTooLarge { .. } => K::MessageTooLarge.code(),
        AgentError::UnknownTopicOrPartition => K::UnknownTopicOrPartition.code(),
        AgentError::OffsetOutOfRange { .. } => K::OffsetOutOfRange.code(),
        AgentError::Timeout => K::RequestTimedOut.code(),
        // Retriable: the client refreshes metadata and retries, on this agent once restarted.
        AgentError::ShuttingDown => K::NotLeaderOrFollower.code(),
        AgentError::Controller(c) => controller_code(c),
        AgentError::ObjectStore(_) | AgentError::CorruptObject(_) | AgentError::Wal(_) => K::KafkaStorageError.code(),
    }
}

pub fn group_code(e: &GroupError) -> i16 {
    match e {
        GroupError::InvalidGroupId => K::InvalidGroupId,
        GroupError::InvalidSessionTimeout => K::InvalidSessionTimeout,
        GroupError::UnknownMemberId => K::UnknownMemberId,
        GroupError::MemberIdRequired => K::MemberIdRequired,
        GroupError::IllegalGeneration => K::IllegalGeneration,
        GroupError::RebalanceInProgress => K::RebalanceInProgress,
        GroupError::FencedInstanceId => K::FencedInstanceId,
        GroupError::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
        GroupError::GroupMaxSizeReached => K::GroupMaxSizeReached,
        GroupError::GroupIdNotFound => K::GroupIdNotFound,
        GroupError::NonEmptyGroup => K::NonEmptyGroup,
        GroupError::GroupSubscribedToTopic => K::GroupSubscribedToTopic,
        GroupError::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        GroupError::OffsetMetadataTooLarge => K::OffsetMetadataTooLarge,
        GroupError::StaleMemberEpoch => K::StaleMemberEpoch,
        GroupError::FencedMemberEpoch => K::FencedMemberEpoch,
        GroupError::UnsupportedAssignor(_) => K::UnsupportedAssignor,
        GroupError::UnreleasedInstanceId => K::UnreleasedInstanceId,
        GroupError::UnsupportedVersion(_) => K::UnsupportedVersion,
        GroupError::InvalidRequest(_) => K::InvalidRequest,
        GroupError::InvalidRegularExpression(_) => K::InvalidRegularExpression,
        GroupError::StreamsInvalidTopology(_) => K::StreamsInvalidTopology,
        GroupError::NotCoordinator => K::NotCoordinator,
        GroupError::InvalidRecordState(_) => K::InvalidRecordState,
        GroupError::InvalidConfig(_) => K::InvalidConfig,
        // Retriable: the client finds the coordinator again and retries.
        GroupError::TooManyGroups | GroupError::Unavailable(_) => K::CoordinatorNotAvailable,
    }
    .code()
}
