//! Request dispatch: check the API key and version against what is implemented, decode the
//! header and body, run the handler of the API's family, encode the response.
//!
//! Kafka's rules for what cannot be answered: an unknown API key, an unsupported version of any
//! API but ApiVersions, or a header or body that does not decode closes the connection;
//! ApiVersions with a too-new version gets a v0 answer with UNSUPPORTED_VERSION and the table.

mod acls;
mod admin;
mod api_versions;
mod configs;
mod consumer_groups;
mod delete_records;
mod error_codes;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod offsets;
mod produce;
mod producers;
mod quotas;
mod replicas;
mod share_groups;
mod streams_groups;
mod telemetry;
mod transactions;
mod users;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, ApiVersionsRequest, ConsumerGroupDescribeRequest,
    ConsumerGroupHeartbeatRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest, DescribeTopicPartitionsRequest,
    DescribeTransactionsRequest, EndTxnRequest, FetchRequest, FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, ListTransactionsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest, StreamsGroupDescribeRequest, StreamsGroupHeartbeatRequest, SyncGroupRequest, TxnOffsetCommitRequest,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::agent::Agent;
use crate::agent::Turn;
use crate::api::groups::ClientInfo;
use crate::failures;
use crate::protocol::listener::Peer;
use crate::telemetry::trace::{self, Span, SpanKind};
use error_codes::ErrorCodes;
use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, DescribeLogDirsRequest, DescribeProducersRequest, ElectLeadersRequest,
    ListPartitionReassignmentsRequest, OffsetForLeaderEpochRequest,
};
pub use quotas::produce_read;

/// Every API this agent answers, with the versions it implements. ApiVersions advertises
/// exactly this table.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    // Share groups, KIP-932 (share_groups.rs).
    (ApiKey::ShareGroupHeartbeat, 1, 1),
    (ApiKey::ShareGroupDescribe, 1, 1),
    (ApiKey::ShareFetch, 1, 1),
    (ApiKey::ShareAcknowledge, 1, 1),
    (ApiKey::DescribeShareGroupOffsets, 0, 0),
    (ApiKey::AlterShareGroupOffsets, 0, 0),
    (ApiKey::DeleteShareGroupOffsets, 0, 0),
    // KIP-1071 streams groups (streams_groups.rs).
    (ApiKey::StreamsGroupHeartbeat, 0, 1),
    (ApiKey::StreamsGroupDescribe, 0, 1),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeProducers, 0, 0),
    // Configs (configs.rs).
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::ListConfigResources, 0, 1),
    // Client telemetry, KIP-714 (telemetry.rs).
    (ApiKey::GetTelemetrySubscriptions, 0, 0),
    (ApiKey::PushTelemetry, 0, 0),
];

pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|(_, lo, hi)| (*lo, *hi))
}

/// What the connection does with a request.
#[derive(Debug)]
pub enum Outcome {
    /// A whole response frame, length prefix included.
    /// A response frame, length prefix included, as slices written back to back.
    Respond(Vec<Bytes>),
    /// Produce with acks=0: Kafka sends nothing back.
    NoResponse,
    /// The request cannot be answered; close the connection (after earlier answers).
    Close(String),
    /// Send this answer, then close the connection (a failed SASL authentication).
    RespondAndClose(Vec<Bytes>, String),
    /// Send this answer (none: acks=0), then read no request of this connection for this long:
    /// a client over a quota (Kafka mutes its channel for the throttle time).
    Throttled(Vec<Bytes>, std::time::Duration),
}

/// A decoded request of an implemented API.
#[derive(Debug)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DeleteRecords(DeleteRecordsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeConfigs(DescribeConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    DescribeTopicPartitions(DescribeTopicPartitionsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    OffsetDelete(OffsetDeleteRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest),
    ConsumerGroupDescribe(ConsumerGroupDescribeRequest),
    ShareGroupHeartbeat(kafka_protocol::messages::ShareGroupHeartbeatRequest),
    ShareGroupDescribe(kafka_protocol::messages::ShareGroupDescribeRequest),
    ShareFetch(kafka_protocol::messages::ShareFetchRequest),
    ShareAcknowledge(kafka_protocol::messages::ShareAcknowledgeRequest),
    DescribeShareGroupOffsets(kafka_protocol::messages::DescribeShareGroupOffsetsRequest),
    AlterShareGroupOffsets(kafka_protocol::messages::AlterShareGroupOffsetsRequest),
    DeleteShareGroupOffsets(kafka_protocol::messages::DeleteShareGroupOffsetsRequest),
    StreamsGroupHeartbeat(StreamsGroupHeartbeatRequest),
    StreamsGroupDescribe(StreamsGroupDescribeRequest),
    AddPartitionsToTxn(AddPartitionsToTxnRequest),
    AddOffsetsToTxn(AddOffsetsToTxnRequest),
    EndTxn(EndTxnRequest),
    TxnOffsetCommit(TxnOffsetCommitRequest),
    DescribeTransactions(DescribeTransactionsRequest),
    ListTransactions(ListTransactionsRequest),
    DescribeAcls(DescribeAclsRequest),
    CreateAcls(CreateAclsRequest),
    DeleteAcls(DeleteAclsRequest),
    SaslHandshake(SaslHandshakeRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
    DescribeUserScramCredentials(DescribeUserScramCredentialsRequest),
    AlterUserScramCredentials(AlterUserScramCredentialsRequest),
    DescribeClientQuotas(DescribeClientQuotasRequest),
    AlterClientQuotas(AlterClientQuotasRequest),
    DescribeLogDirs(DescribeLogDirsRequest),
    ElectLeaders(ElectLeadersRequest),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest),
    ListPartitionReassignments(ListPartitionReassignmentsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    DescribeProducers(DescribeProducersRequest),
    AlterConfigs(kafka_protocol::messages::AlterConfigsRequest),
    IncrementalAlterConfigs(kafka_protocol::messages::IncrementalAlterConfigsRequest),
    GetTelemetrySubscriptions(kafka_protocol::messages::GetTelemetrySubscriptionsRequest),
    PushTelemetry(kafka_protocol::messages::PushTelemetryRequest),
    ListConfigResources(kafka_protocol::messages::ListConfigResourcesRequest),
}

/// A request ready to run: what it is, which version, whom to answer.
#[derive(Debug)]
pub struct Parsed {
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    /// The header's client id ("" when null).
    pub client_id: String,
    pub request: Request,
}

/// Checks and decodes one request frame (without its length prefix). `Err` is what to do
/// instead of running a handler: close the connection, or (ApiVersions too new) answer.
/// Pure: no I/O, no state; the fuzz target drives it with arbitrary bytes.
pub fn parse(frame: Bytes) -> Result<Parsed, Outcome> {
    if frame.len() < 8 {
        return Err(Outcome::Close(format!("frame of {} bytes is too short", frame.len())));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(api_key) else {
        return Err(Outcome::Close(format!("unknown api key {api_key}")));
    };
    let Some((lo, hi)) = supported_versions(key) else {
        return Err(Outcome::Close(format!("api {key:?} is not implemented")));
    };
    if version < lo || version > hi {
        if key == ApiKey::ApiVersions {
            return Err(api_versions::unsupported_version(correlation_id));
        }
        return Err(Outcome::Close(format!("unsupported version {version} of {key:?}")));
    }
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version))
        .map_err(|e| Outcome::Close(format!("bad request header: {e}")))?;
    macro_rules! decode {
        ($variant:ident, $ty:ty) => {
            Request::$variant(
                <$ty>::decode(&mut buf, version).map_err(|e| Outcome::Close(format!("cannot decode {key:?} v{version}: {e}")))?,
            )
        };
    }
    let request = match key {
        ApiKey::ApiVersions => decode!(ApiVersions, ApiVersionsRequest),
        ApiKey::Metadata => decode!(Metadata, MetadataRequest),
        ApiKey::CreateTopics => decode!(CreateTopics, CreateTopicsRequest),
        ApiKey::DeleteTopics => decode!(DeleteTopics, DeleteTopicsRequest),
        ApiKey::CreatePartitions => decode!(CreatePartitions, CreatePartitionsRequest),
        ApiKey::DeleteRecords => decode!(DeleteRecords, DeleteRecordsRequest),
        ApiKey::Produce => decode!(Produce, ProduceRequest),
        ApiKey::Fetch => decode!(Fetch, FetchRequest),
        ApiKey::ListOffsets => decode!(ListOffsets, ListOffsetsRequest),
        ApiKey::InitProducerId => decode!(InitProducerId, InitProducerIdRequest),
        ApiKey::DescribeConfigs => decode!(DescribeConfigs, DescribeConfigsRequest),
        ApiKey::DescribeCluster => decode!(DescribeCluster, DescribeClusterRequest),
        ApiKey::DescribeTopicPartitions => decode!(DescribeTopicPartitions, DescribeTopicPartitionsRequest),
        ApiKey::FindCoordinator => decode!(FindCoordinator, FindCoordinatorRequest),
        ApiKey::JoinGroup => decode!(JoinGroup, JoinGroupRequest),
        ApiKey::SyncGroup => decode!(SyncGroup, SyncGroupRequest),
        ApiKey::Heartbeat => decode!(Heartbeat, HeartbeatRequest),
        ApiKey::LeaveGroup => decode!(LeaveGroup, LeaveGroupRequest),
        ApiKey::OffsetCommit => decode!(OffsetCommit, OffsetCommitRequest),
        ApiKey::OffsetFetch => decode!(OffsetFetch, OffsetFetchRequest),
        ApiKey::OffsetDelete => decode!(OffsetDelete, OffsetDeleteRequest),
        ApiKey::ListGroups => decode!(ListGroups, ListGroupsRequest),
        ApiKey::DescribeGroups => decode!(DescribeGroups, DescribeGroupsRequest),
        ApiKey::DeleteGroups => decode!(DeleteGroups, DeleteGroupsRequest),
        ApiKey::ConsumerGroupHeartbeat => decode!(ConsumerGroupHeartbeat, ConsumerGroupHeartbeatRequest),
        ApiKey::ConsumerGroupDescribe => decode!(ConsumerGroupDescribe, ConsumerGroupDescribeRequest),
        ApiKey::ShareGroupHeartbeat => decode!(ShareGroupHeartbeat, kafka_protocol::messages::ShareGroupHeartbeatRequest),
        ApiKey::ShareGroupDescribe => decode!(ShareGroupDescribe, kafka_protocol::messages::ShareGroupDescribeRequest),
        ApiKey::ShareFetch => decode!(ShareFetch, kafka_protocol::messages::ShareFetchRequest),
        ApiKey::ShareAcknowledge => decode!(ShareAcknowledge, kafka_protocol::messages::ShareAcknowledgeRequest),
        ApiKey::DescribeShareGroupOffsets => decode!(DescribeShareGroupOffsets, kafka_protocol::messages::DescribeShareGroupOffsetsRequest),
        ApiKey::AlterShareGroupOffsets => decode!(AlterShareGroupOffsets, kafka_protocol::messages::AlterShareGroupOffsetsRequest),
        ApiKey::DeleteShareGroupOffsets => decode!(DeleteShareGroupOffsets, kafka_protocol::messages::DeleteShareGroupOffsetsRequest),
        ApiKey::StreamsGroupHeartbeat => decode!(StreamsGroupHeartbeat, StreamsGroupHeartbeatRequest),
        ApiKey::StreamsGroupDescribe => decode!(StreamsGroupDescribe, StreamsGroupDescribeRequest),
        ApiKey::AddPartitionsToTxn => decode!(AddPartitionsToTxn, AddPartitionsToTxnRequest),
        ApiKey::AddOffsetsToTxn => decode!(AddOffsetsToTxn, AddOffsetsToTxnRequest),
        ApiKey::EndTxn => decode!(EndTxn, EndTxnRequest),
        ApiKey::TxnOffsetCommit => decode!(TxnOffsetCommit, TxnOffsetCommitRequest),
        ApiKey::DescribeTransactions => decode!(DescribeTransactions, DescribeTransactionsRequest),
        ApiKey::ListTransactions => decode!(ListTransactions, ListTransactionsRequest),
        ApiKey::DescribeAcls => decode!(DescribeAcls, DescribeAclsRequest),
        ApiKey::CreateAcls => decode!(CreateAcls, CreateAclsRequest),
        ApiKey::DeleteAcls => decode!(DeleteAcls, DeleteAclsRequest),
        ApiKey::SaslHandshake => decode!(SaslHandshake, SaslHandshakeRequest),
        ApiKey::SaslAuthenticate => decode!(SaslAuthenticate, SaslAuthenticateRequest),
        ApiKey::DescribeUserScramCredentials => decode!(DescribeUserScramCredentials, DescribeUserScramCredentialsRequest),
        ApiKey::AlterUserScramCredentials => decode!(AlterUserScramCredentials, AlterUserScramCredentialsRequest),
        ApiKey::DescribeClientQuotas => decode!(DescribeClientQuotas, DescribeClientQuotasRequest),
        ApiKey::AlterClientQuotas => decode!(AlterClientQuotas, AlterClientQuotasRequest),
        ApiKey::DescribeLogDirs => decode!(DescribeLogDirs, DescribeLogDirsRequest),
        ApiKey::ElectLeaders => decode!(ElectLeaders, ElectLeadersRequest),
        ApiKey::AlterPartitionReassignments => decode!(AlterPartitionReassignments, AlterPartitionReassignmentsRequest),
        ApiKey::ListPartitionReassignments => decode!(ListPartitionReassignments, ListPartitionReassignmentsRequest),
        ApiKey::OffsetForLeaderEpoch => decode!(OffsetForLeaderEpoch, OffsetForLeaderEpochRequest),
        ApiKey::DescribeProducers => decode!(DescribeProducers, DescribeProducersRequest),
        ApiKey::AlterConfigs => decode!(AlterConfigs, kafka_protocol::messages::AlterConfigsRequest),
        ApiKey::IncrementalAlterConfigs => decode!(IncrementalAlterConfigs, kafka_protocol::messages::IncrementalAlterConfigsRequest),
        ApiKey::GetTelemetrySubscriptions => decode!(GetTelemetrySubscriptions, kafka_protocol::messages::GetTelemetrySubscriptionsRequest),
        ApiKey::PushTelemetry => decode!(PushTelemetry, kafka_protocol::messages::PushTelemetryRequest),
        ApiKey::ListConfigResources => decode!(ListConfigResources, kafka_protocol::messages::ListConfigResourcesRequest),
        _ => return Err(Outcome::Close(format!("api {key:?} is not implemented"))),
    };
    let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
    Ok(Parsed { key, version, correlation_id: header.correlation_id, client_id, request })
}

/// Handles one request frame (without its length prefix) from `peer`. `turn` orders the
/// produce requests of one connection, and its offset commits (see [`Turn`]). SaslHandshake
/// and SaslAuthenticate of a SASL listener are the connection's ([`super::sasl`]); here they
/// get ILLEGAL_SASL_STATE, as on a listener without SASL in Kafka. Client quotas are
/// enforced on the way ([`quotas::Meter`]): an answer may come throttled;
/// `produce_throttle_ms` is what [`produce_read`] decided as the request was read.
pub async fn handle(agent: Arc<Agent>, frame: Bytes, peer: Arc<Peer>, turn: Option<Turn>, produce_throttle_ms: u64) -> Outcome {
    let meter = quotas::Meter::new(&agent, &peer.principal, produce_throttle_ms);
    let outcome = meter.busy.time(answer(agent.clone(), frame, peer.clone(), turn, &meter)).await;
    meter.finish(outcome)
}

/// [`handle`]'s work, with `meter` told what the request is and what it used.
async fn answer(agent: Arc<Agent>, frame: Bytes, peer: Arc<Peer>, mut turn: Option<Turn>, meter: &quotas::Meter<'_>) -> Outcome {
    let mut parsed = match parse(frame) {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    // Any turn but a produce request's is held until the answer is ready (dropped on return).
    if !matches!(parsed.request, Request::Produce(_))
        && let Some(turn) = turn.as_mut()
    {
        turn.wait().await;
    }
    if let Some(outcome) = meter.start(&mut parsed, peer.addr) {
        return outcome;
    }
    // Kafka reports the client host as "/<ip>".
    let client = ClientInfo { client_id: parsed.client_id, client_host: format!("/{}", peer.addr.ip()) };
    let listener = &peer.endpoint.address;
    let version = parsed.version;
    let ctx = Ctx { key: parsed.key, version, correlation_id: parsed.correlation_id, meter: Some(meter) };
    let who = crate::agent::acl::Requester { principal: &peer.principal, host: peer.addr.ip() };
    let access = acls::Access::new(&agent.authorizer, who, parsed.key);
    match parsed.request {
        Request::ApiVersions(r) => {
            if version >= 3 {
                peer.software.get_or_init(|| (r.client_software_name.to_string(), r.client_software_version.to_string()));
            }
            ctx.respond(&api_versions::handle(version))
        }
        Request::Metadata(r) => ctx.counted(&metadata::handle(&agent, &access, version, r, &client, listener).await),
        Request::CreateTopics(r) => ctx.counted(&admin::create_topics(&agent, &access, version, r).await),
        Request::DeleteTopics(r) => ctx.counted(&admin::delete_topics(&agent, &access, version, r).await),
        Request::CreatePartitions(r) => ctx.counted(&admin::create_partitions(&agent, &access, r, &client, listener).await),
        Request::DeleteRecords(r) => ctx.counted(&delete_records::handle(&agent, &access, r).await),
        Request::Produce(r) => match produce::handle(&agent, &access, version, r, turn, &client.client_id).await {
            Some(resp) => ctx.respond(&resp),
            None => Outcome::NoResponse,
        },
        Request::Fetch(r) => {
            let answer = fetch::handle(&agent, &access, version, r, peer.addr, &client.client_id).await;
            ctx.outcome(fetch::encode(ctx.key.response_header_version(version), ctx.correlation_id, version, answer))
        }
        Request::ListOffsets(r) => ctx.counted(&list_offsets::handle(&agent, &access, version, r).await),
        Request::InitProducerId(r) => ctx.counted(&producers::init_producer_id(&agent, &access, version, r).await),
        Request::DescribeConfigs(r) => ctx.respond(&configs::describe_configs(&agent, &access, version, r).await),
        Request::DescribeCluster(r) => ctx.respond(&metadata::describe_cluster(&agent, &access, r, listener)),
        Request::DescribeTopicPartitions(r) => ctx.counted(&metadata::describe_topic_partitions(&agent, &access, r, &client, listener)),
        Request::FindCoordinator(r) => ctx.counted(&groups::find_coordinator(&agent, &access, version, r, &client, listener)),
        Request::JoinGroup(r) => ctx.counted(&groups::join_group(&agent, &access, version, r, &client).await),
        Request::SyncGroup(r) => ctx.counted(&groups::sync_group(&agent, &access, version, r).await),
        Request::Heartbeat(r) => ctx.counted(&groups::heartbeat(&agent, &access, r).await),
        Request::LeaveGroup(r) => ctx.counted(&groups::leave_group(&agent, &access, version, r).await),
        Request::OffsetCommit(r) => ctx.counted(&offsets::offset_commit(&agent, &access, version, r).await),
        Request::OffsetFetch(r) => ctx.counted(&offsets::offset_fetch(&agent, &access, version, r).await),
        Request::OffsetDelete(r) => ctx.counted(&offsets::offset_delete(&agent, &access, r).await),
        Request::ListGroups(r) => ctx.counted(&groups::list_groups(&agent, &access, version, r).await),
        Request::DescribeGroups(r) => ctx.counted(&groups::describe_groups(&agent, &access, version, r).await),
        Request::DeleteGroups(r) => ctx.counted(&groups::delete_groups(&agent, &access, r).await),
        Request::ConsumerGroupHeartbeat(r) => ctx.counted(&consumer_groups::heartbeat(&agent, &access, version, r, &client).await),
        Request::ConsumerGroupDescribe(r) => ctx.counted(&consumer_groups::describe(&agent, &access, version, r).await),
        Request::ShareGroupHeartbeat(r) => ctx.respond(&share_groups::heartbeat(&agent, &access, r, &client).await),
        Request::ShareGroupDescribe(r) => ctx.respond(&share_groups::describe(&agent, &access, r).await),
        Request::ShareFetch(r) => ctx.respond(&share_groups::share_fetch(&agent, &access, r).await),
        Request::ShareAcknowledge(r) => ctx.respond(&share_groups::share_acknowledge(&agent, &access, r).await),
        Request::DescribeShareGroupOffsets(r) => ctx.respond(&share_groups::describe_offsets(&agent, &access, r).await),
        Request::AlterShareGroupOffsets(r) => ctx.respond(&share_groups::alter_offsets(&agent, &access, r).await),
        Request::DeleteShareGroupOffsets(r) => ctx.respond(&share_groups::delete_offsets(&agent, &access, r).await),
        Request::StreamsGroupHeartbeat(r) => ctx.counted(&streams_groups::heartbeat(&agent, &access, version, r, &client).await),
        Request::StreamsGroupDescribe(r) => ctx.counted(&streams_groups::describe(&agent, &access, version, r).await),
        Request::AddPartitionsToTxn(r) => ctx.counted(&transactions::add_partitions_to_txn(&agent, &access, version, r).await),
        Request::AddOffsetsToTxn(r) => ctx.counted(&transactions::add_offsets_to_txn(&agent, &access, version, r).await),
        Request::EndTxn(r) => ctx.counted(&transactions::end_txn(&agent, &access, version, r).await),
        Request::TxnOffsetCommit(r) => ctx.counted(&transactions::txn_offset_commit(&agent, &access, version, r).await),
        Request::DescribeTransactions(r) => ctx.respond(&transactions::describe_transactions(&agent, &access, r).await),
        Request::ListTransactions(r) => ctx.respond(&transactions::list_transactions(&agent, &access, version, r).await),
        Request::DescribeAcls(r) => ctx.respond(&acls::describe_acls(&agent, &access, r).await),
        Request::CreateAcls(r) => ctx.respond(&acls::create_acls(&agent, &access, r).await),
        Request::DeleteAcls(r) => ctx.respond(&acls::delete_acls(&agent, &access, r).await),
        Request::SaslHandshake(_) => ctx.respond(&super::sasl::handshake_refused()),
        Request::SaslAuthenticate(_) => ctx.respond(&super::sasl::authenticate_refused()),
        Request::DescribeUserScramCredentials(r) => ctx.respond(&users::describe(&agent, &access, r).await),
        Request::AlterUserScramCredentials(r) => ctx.respond(&users::alter(&agent, &access, r).await),
        Request::DescribeClientQuotas(r) => ctx.respond(&quotas::describe(&agent, &access, r).await),
        Request::AlterClientQuotas(r) => ctx.respond(&quotas::alter(&agent, &access, r).await),
        Request::DescribeLogDirs(r) => ctx.respond(&replicas::describe_log_dirs(&agent, &access, r, &client.client_id, listener).await),
        Request::ElectLeaders(r) => ctx.respond(&replicas::elect_leaders(&agent, &access, version, r)),
        Request::AlterPartitionReassignments(r) => {
            ctx.respond(&replicas::alter_partition_reassignments(&agent, &access, r, &client.client_id, listener))
        }
        Request::ListPartitionReassignments(r) => ctx.respond(&replicas::list_partition_reassignments(&access, r)),
        Request::OffsetForLeaderEpoch(r) => ctx.respond(&replicas::offset_for_leader_epoch(&agent, &access, r)),
        Request::DescribeProducers(r) => ctx.respond(&producers::describe_producers(&agent, &access, r).await),
        Request::AlterConfigs(r) => ctx.respond(&configs::alter_configs(&agent, &access, r).await),
        Request::IncrementalAlterConfigs(r) => ctx.respond(&configs::incremental_alter_configs(&agent, &access, r).await),
        Request::GetTelemetrySubscriptions(r) => ctx.counted(&telemetry::get_subscriptions(&agent, r, &client.client_id, &peer)),
        Request::PushTelemetry(r) => ctx.counted(&telemetry::push(&agent, r, &client.client_id, &peer)),
        Request::ListConfigResources(r) => ctx.respond(&configs::list_config_resources(&agent, &access, version, r).await),
    }
}

/// A response to one request: the frame, or why it cannot be encoded.
pub(crate) fn encode_response<R: quotas::Throttle>(key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Outcome {
    Ctx { key, version, correlation_id, meter: None }.respond(body)
}

struct Ctx<'a> {
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    /// The request's quota accounting (none for answers outside a request's handler).
    meter: Option<&'a quotas::Meter<'a>>,
}

impl Ctx<'_> {
    /// [`Self::respond`], counting the answer's error codes by API and name.
    fn counted<R: quotas::Throttle + ErrorCodes>(&self, body: &R) -> Outcome {
        body.error_codes(&mut |code| failures::count(self.key, code));
        self.respond(body)
    }

    /// The response, with the request's throttle time in it if it is over a quota.
    fn respond<R: quotas::Throttle>(&self, body: &R) -> Outcome {
        let header_version = self.key.response_header_version(self.version);
        let ms = self.meter.map_or(0, |m| m.throttle_ms());
        let throttled = if ms > 0 { body.with_throttle(ms.min(i32::MAX as u64) as i32) } else { None };
        let frame = match &throttled {
            Some(body) => encode_frame(header_version, self.correlation_id, self.version, body),
            None => encode_frame(header_version, self.correlation_id, self.version, body),
        };
        self.encoded(frame)
    }

    /// A response frame the handler encoded itself (Fetch's, from the cache's buffers).
    fn outcome(&self, frame: Result<Vec<Bytes>, String>) -> Outcome {
        let frame = frame.map(|mut f| {
            if let Some(m) = self.meter {
                m.fetch_frame(&mut f, self.version, self.correlation_id);
            }
            f
        });
        self.encoded(frame)
    }

    fn encoded(&self, frame: Result<Vec<Bytes>, String>) -> Outcome {
        match frame {
            Ok(frame) => Outcome::Respond(frame),
            Err(e) => {
                tracing::error!(api = ?self.key, version = self.version, error = %e, "cannot encode response");
                Outcome::Close(format!("cannot encode {:?} v{} response: {e}", self.key, self.version))
            }
        }
    }
}

/// A response frame: length prefix, header, body.
fn encode_frame<R: Encodable>(header_version: i16, correlation_id: i32, version: i16, body: &R) -> Result<Vec<Bytes>, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(vec![buf.freeze()])
}

/// Converts a String into the crate's string type.
/// A sampled request's root span (`name`: the API, as Kafka names it), with the attributes
/// every traced request has: OpenTelemetry's messaging conventions (`operation`: `send`,
/// `receive`), the client id and the API version. None when the request is not sampled.
fn request_span(name: &'static str, operation: &'static str, client_id: &str, version: i16) -> Option<Span> {
    let mut span = trace::root(name, SpanKind::Server)?;
    span.set("messaging.system", "kafka");
    span.set("messaging.operation.type", operation);
    span.set("messaging.client.id", client_id);
    span.set("kafka.api_version", version);
    Some(span)
}

fn str_bytes(s: impl Into<String>) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(key: i16, version: i16, rest: &[u8]) -> Bytes {
        let mut b = Vec::new();
        b.extend_from_slice(&key.to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes());
        b.extend_from_slice(rest);
        Bytes::from(b)
    }

    #[test]
    fn unknown_keys_and_versions_close_but_api_versions_answers() {
        assert!(matches!(parse(frame(999, 0, &[])), Err(Outcome::Close(_))));
        assert!(matches!(parse(frame(ApiKey::Produce as i16, 2, &[0, 0])), Err(Outcome::Close(_))));
        // DescribeConfigs exists in Kafka but is not implemented here.
        assert!(matches!(parse(frame(ApiKey::DescribeConfigs as i16, 1, &[0, 0])), Err(Outcome::Close(_))));
        match parse(frame(ApiKey::ApiVersions as i16, 99, &[])) {
            Err(Outcome::Respond(b)) => {
                let b = b.concat();
                // length, correlation id, then the v0 body: error code 35 first.
                assert_eq!(&b[4..8], &7i32.to_be_bytes());
                assert_eq!(&b[8..10], &35i16.to_be_bytes());
            }
            other => panic!("{other:?}"),
        }
        // ApiVersions v0 with a null client id decodes.
        assert!(parse(frame(ApiKey::ApiVersions as i16, 0, &[0xff, 0xff])).is_ok());
        assert!(matches!(parse(Bytes::from_static(&[0, 18])), Err(Outcome::Close(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes behind every implemented (api, version) never panic the decoder.
        #[test]
        fn arbitrary_bodies_never_panic(api in 0usize..SUPPORTED_APIS.len(), v in 0i16..20,
                                        body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (key, lo, hi) = SUPPORTED_APIS[api];
            let version = lo + v % (hi - lo + 1);
            let _ = parse(frame(key as i16, version, &body));
        }
    }
}
