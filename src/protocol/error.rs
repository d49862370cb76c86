//! The one place where internal errors become Kafka error codes.

use kafka_protocol::error::ResponseError as K;

use crate::agent::AgentError;
use crate::controller::ControllerError;
use crate::protocol::records::RecordsError;

pub fn controller_code(e: &ControllerError) -> i16 {
    match e {
        ControllerError::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ControllerError::UnknownTopicId => K::UnknownTopicId,
        ControllerError::TopicAlreadyExists(_) => K::TopicAlreadyExists,
        ControllerError::InvalidTopicName(_) => K::InvalidTopicException,
        ControllerError::InvalidPartitions(_) => K::InvalidPartitions,
        ControllerError::InvalidReplicationFactor(_) => K::InvalidReplicationFactor,
        ControllerError::InvalidConfig(_) => K::InvalidConfig,
        ControllerError::InvalidRequest(_) => K::InvalidRequest,
        ControllerError::OutOfOrderSequence(_) => K::OutOfOrderSequenceNumber,
        ControllerError::InvalidProducerEpoch(_) => K::InvalidProducerEpoch,
        // Retriable for clients: they back off and try again.
        ControllerError::Unavailable(_) => K::RequestTimedOut,
    }
    .code()
}

pub fn agent_code(e: &AgentError) -> i16 {
    match e {
        AgentError::Records(RecordsError::Corrupt(_)) => K::CorruptMessage.code(),
        AgentError::Records(RecordsError::Invalid(_)) => K::InvalidRecord.code(),
        AgentError::Records(RecordsError::UnsupportedCompression) => K::UnsupportedCompressionType.code(),
        AgentError::MessageTooLarge { .. } => K::MessageTooLarge.code(),
        AgentError::UnknownTopicOrPartition => K::UnknownTopicOrPartition.code(),
        AgentError::OffsetOutOfRange { .. } => K::OffsetOutOfRange.code(),
        AgentError::Timeout => K::RequestTimedOut.code(),
        // Retriable: the client refreshes metadata and retries, on this agent once restarted.
        AgentError::ShuttingDown => K::NotLeaderOrFollower.code(),
        AgentError::Controller(c) => controller_code(c),
        AgentError::ObjectStore(_) | AgentError::CorruptObject(_) | AgentError::Wal(_) => {
            K::KafkaStorageError.code()
        }
    }
}
