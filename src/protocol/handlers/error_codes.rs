//! The error codes an answer carries, for `sidestream_request_errors_total{api,error}`: one
//! [`ErrorCodes`] walk per response type, top-level codes and those of its groups, topics and
//! partitions alike. Produce and Fetch count theirs where they set them
//! ([`crate::failures::record`], which also logs them), so they are not walked here.

use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatResponse,
    CreatePartitionsResponse, CreateTopicsResponse, DeleteGroupsResponse, DeleteRecordsResponse, DeleteTopicsResponse,
    DescribeGroupsResponse, DescribeTopicPartitionsResponse, EndTxnResponse, FindCoordinatorResponse, GetTelemetrySubscriptionsResponse,
    HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse, ListOffsetsResponse,
    MetadataResponse, OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, PushTelemetryResponse, SyncGroupResponse,
    TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{StreamsGroupDescribeResponse, StreamsGroupHeartbeatResponse};

/// A response whose error codes can be listed (0 included: the counter skips it).
pub trait ErrorCodes {
    fn error_codes(&self, each: &mut dyn FnMut(i16));
}

/// Responses with one top-level `error_code` and nothing below it.
macro_rules! top_level {
    ($($t:ident),* $(,)?) => {
        $(impl ErrorCodes for $t {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                each(self.error_code);
            }
        })*
    };
}

top_level!(
    AddOffsetsToTxnResponse,
    ConsumerGroupHeartbeatResponse,
    EndTxnResponse,
    GetTelemetrySubscriptionsResponse,
    HeartbeatResponse,
    InitProducerIdResponse,
    JoinGroupResponse,
    ListGroupsResponse,
    PushTelemetryResponse,
    StreamsGroupHeartbeatResponse,
    SyncGroupResponse,
);

/// Responses with a list of results (topics, groups) carrying one `error_code` each.
macro_rules! per_item {
    ($($t:ident . $list:ident),* $(,)?) => {
        $(impl ErrorCodes for $t {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                self.$list.iter().for_each(|i| each(i.error_code));
            }
        })*
    };
}

per_item!(
    CreateTopicsResponse.topics,
    DeleteTopicsResponse.responses,
    CreatePartitionsResponse.results,
    DescribeGroupsResponse.groups,
    ConsumerGroupDescribeResponse.groups,
    StreamsGroupDescribeResponse.groups,
    DeleteGroupsResponse.results,
);

/// Responses with topics of partitions carrying one `error_code` each.
macro_rules! per_partition {
    ($($t:ident),* $(,)?) => {
        $(impl ErrorCodes for $t {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                self.topics.iter().flat_map(|t| &t.partitions).for_each(|p| each(p.error_code));
            }
        })*
    };
}

per_partition!(DeleteRecordsResponse, ListOffsetsResponse, OffsetCommitResponse, TxnOffsetCommitResponse);

impl ErrorCodes for MetadataResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        for t in &self.topics {
            each(t.error_code);
            t.partitions.iter().for_each(|p| each(p.error_code));
        }
    }
}

impl ErrorCodes for DescribeTopicPartitionsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            each(t.error_code);
            t.partitions.iter().for_each(|p| each(p.error_code));
        }
    }
}

impl ErrorCodes for FindCoordinatorResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        self.coordinators.iter().for_each(|c| each(c.error_code));
    }
}

impl ErrorCodes for LeaveGroupResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        self.members.iter().for_each(|m| each(m.error_code));
    }
}

impl ErrorCodes for OffsetFetchResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        // Up to v7 one group (top level), from v8 a list of groups.
        each(self.error_code);
        self.topics.iter().flat_map(|t| &t.partitions).for_each(|p| each(p.error_code));
        for g in &self.groups {
            each(g.error_code);
            g.topics.iter().flat_map(|t| &t.partitions).for_each(|p| each(p.error_code));
        }
    }
}

impl ErrorCodes for OffsetDeleteResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        self.topics.iter().flat_map(|t| &t.partitions).for_each(|p| each(p.error_code));
    }
}

impl ErrorCodes for AddPartitionsToTxnResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        let by_txn = self.results_by_transaction.iter().flat_map(|txn| &txn.topic_results);
        for t in self.results_by_topic_v3_and_below.iter().chain(by_txn) {
            t.results_by_partition.iter().for_each(|p| each(p.partition_error_code));
        }
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
    };

    use super::*;

    fn codes(r: &dyn ErrorCodes) -> Vec<i16> {
        let mut out = Vec::new();
        r.error_codes(&mut |c| out.push(c));
        out
    }

    #[test]
    fn every_level_of_an_answer_is_walked() {
        assert_eq!(codes(&HeartbeatResponse::default().with_error_code(16)), vec![16]);
        let partition = OffsetFetchResponsePartitions::default().with_error_code(3);
        let group = OffsetFetchResponseGroup::default()
            .with_error_code(15)
            .with_topics(vec![OffsetFetchResponseTopics::default().with_partitions(vec![partition])]);
        assert_eq!(codes(&OffsetFetchResponse::default().with_groups(vec![group])), vec![0, 15, 3]);
    }
}
