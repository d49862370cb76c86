//! DeleteRecords: moves partitions' log start offsets forward (`kafka-delete-records.sh`,
//! AdminClient `deleteRecords`). Offset -1 means the high watermark; an offset below the log
//! start changes nothing; one beyond the high watermark is OFFSET_OUT_OF_RANGE. Every
//! partition of the request goes to the controller in one call (one store transaction).

use kafka_protocol::messages::DeleteRecordsRequest;
use kafka_protocol::messages::DeleteRecordsResponse;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};

use crate::agent::Agent;
use crate::api::{ControllerError, TopicRef};
use crate::protocol::error::controller_code;

pub async fn handle(agent: &Agent, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    // Each partition's answer, in request order; known partitions are asked in one call.
    let mut answers: Vec<Vec<Result<i64, ControllerError>>> = Vec::with_capacity(req.topics.len());
    let mut asked = Vec::new();
    let mut slots = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let meta = agent.controller.topic(TopicRef::Name(&t.name.0));
        let mut topic = Vec::with_capacity(t.partitions.len());
        for (pi, p) in t.partitions.iter().enumerate() {
            match &meta {
                Some(m) if (0..m.partitions).contains(&p.partition_index) => {
                    asked.push((m.id, p.partition_index, p.offset));
                    slots.push((ti, pi));
                    topic.push(Err(ControllerError::OperationNotAttempted));
                }
                _ => topic.push(Err(ControllerError::UnknownTopicOrPartition)),
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
            answers[ti][pi] = r;
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
                        Err(e) => r.with_low_watermark(-1).with_error_code(controller_code(&e)),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
