//! DeleteRecords: moves partitions' log start offsets forward (`kafka-delete-records.sh`,
//! AdminClient `deleteRecords`). Offset -1 means the high watermark; an offset below the log
//! start changes nothing; one beyond the high watermark is OFFSET_OUT_OF_RANGE. Every
//! partition of the request goes to the controller in one call (one store transaction). Each
//! topic needs DELETE (TOPIC_AUTHORIZATION_FAILED on its partitions).

use kafka_protocol::messages::DeleteRecordsRequest;
use kafka_protocol::messages::DeleteRecordsResponse;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};

use kafka_protocol::error::ResponseError;

use super::acls::Access;
use crate::agent::Agent;
use crate::api::acl::{AclOperation, ResourceType};
use crate::api::{ControllerError, TopicRef, is_internal_topic};
use crate::protocol::error::controller_code;

pub async fn handle(agent: &Agent, access: &Access<'_>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    // Each partition's answer (low watermark or error code), in request order; known partitions
    // are asked in one call.
    let mut answers: Vec<Vec<Result<i64, i16>>> = Vec::with_capacity(req.topics.len());
    let mut asked = Vec::new();
    let mut slots = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let allowed = access.check(AclOperation::Delete, ResourceType::Topic, &t.name.0);
        let meta = agent.controller.topic(TopicRef::Name(&t.name.0));
        let mut topic = Vec::with_capacity(t.partitions.len());
        for (pi, p) in t.partitions.iter().enumerate() {
            match &meta {
                _ if !allowed => topic.push(Err(ResponseError::TopicAuthorizationFailed.code())),
                // As Kafka: an internal topic's records are not deleted by clients.
                Some(m) if is_internal_topic(&m.name) => topic.push(Err(ResponseError::InvalidTopicException.code())),
                Some(m) if (0..m.partitions).contains(&p.partition_index) => {
                    asked.push((m.id, p.partition_index, p.offset));
                    slots.push((ti, pi));
                    topic.push(Err(controller_code(&ControllerError::OperationNotAttempted)));
                }
                _ => topic.push(Err(controller_code(&ControllerError::UnknownTopicOrPartition))),
            }
        }
        answers.push(topic);
    }
    if !asked.is_empty() {
        let results = match agent.controller.delete_records(asked).await {
            Ok(results) => results,
            Err(e) => slots.iter().map(|_| Err(e.clone())).collect(),
        };
        for ((ti, pi), r) in slots.into_iter().zip(results) {
            answers[ti][pi] = r.map_err(|e| controller_code(&e));
        }
    }
    let topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, answers)| {
            let partitions = t
                .partitions
                .iter()
                .zip(answers)
                .map(|(p, a)| {
                    let r = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
                    match a {
                        Ok(low) => r.with_low_watermark(low),
                        Err(code) => r.with_low_watermark(-1).with_error_code(code),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
