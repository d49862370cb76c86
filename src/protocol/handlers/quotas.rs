//! Client quotas on the wire: DescribeClientQuotas (API 48) and AlterClientQuotas (API 49), as
//! `kafka-configs.sh --entity-type users|clients` and AdminClient's `describeClientQuotas` /
//! `alterClientQuotas` use them (DESCRIBE_CONFIGS, ALTER_CONFIGS on the cluster, as in Kafka);
//! and [`Meter`], the request's side of quota enforcement.
//!
//! A [`Meter`] goes with every request. Once the request is parsed it knows which quotas apply
//! (none: it does nothing). It records what the request used, as Kafka's `KafkaApis` does:
//! Produce its request bytes, Fetch its response bytes, CreateTopics/DeleteTopics/
//! CreatePartitions the partitions they created, deleted or added, every request its handler's
//! time; and it decides the
//! throttle time (the largest of them), which goes into the response's `throttle_time_ms` and
//! keeps the connection from reading another request for that long after the answer is sent
//! ([`Outcome::Throttled`]). Before the handler runs: a Fetch already over its quota is answered
//! at once with nothing and its throttle time (KIP-219), and asks for at most what the quota's
//! window allows; CreateTopics v6+, DeleteTopics v5+ and CreatePartitions v3+ of a principal
//! already over its `controller_mutation_rate` are refused with THROTTLING_QUOTA_EXCEEDED
//! (KIP-599; older versions are accepted, then throttled).

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, AlterClientQuotasRequest, AlterClientQuotasResponse,
    AlterUserScramCredentialsResponse, ApiKey, ApiVersionsResponse, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatResponse,
    CreateAclsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteAclsResponse,
    DeleteGroupsResponse, DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeAclsResponse,
    DescribeClientQuotasRequest, DescribeClientQuotasResponse, DescribeClusterResponse, DescribeConfigsResponse, DescribeGroupsResponse,
    DescribeTopicPartitionsResponse, DescribeTransactionsResponse, DescribeUserScramCredentialsResponse, EndTxnResponse, FetchRequest,
    FetchResponse, FindCoordinatorResponse, HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse,
    ListGroupsResponse, ListOffsetsResponse, ListTransactionsResponse, MetadataResponse, OffsetCommitResponse, OffsetDeleteResponse,
    OffsetFetchResponse, ProduceResponse, SaslAuthenticateResponse, SaslHandshakeResponse, SyncGroupResponse, TopicName,
    TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsResponse, DescribeLogDirsResponse, DescribeProducersResponse, ElectLeadersResponse,
    ListPartitionReassignmentsResponse, OffsetForLeaderEpochResponse,
};
use kafka_protocol::messages::{
    AlterShareGroupOffsetsResponse, DeleteShareGroupOffsetsResponse, DescribeShareGroupOffsetsResponse, ShareAcknowledgeResponse,
    ShareFetchResponse, ShareGroupDescribeResponse, ShareGroupHeartbeatResponse,
};
use kafka_protocol::messages::{GetTelemetrySubscriptionsResponse, PushTelemetryResponse};
use kafka_protocol::messages::{StreamsGroupDescribeResponse, StreamsGroupHeartbeatResponse};
use kafka_protocol::messages::{alter_client_quotas_response, describe_client_quotas_response};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::acls::Access;
use super::{Outcome, Parsed, Request, str_bytes};
use crate::agent::Agent;
use crate::agent::fetch_session::Mode;
use crate::agent::quota::{self, Busy, Kind, Limits};
use crate::api::acl::AclOperation;
use crate::api::quota::{EntityPart, FilterComponent, Match, QuotaAlteration, QuotaFilter, QuotaOp};
use crate::api::{ControllerError, TopicRef};
use crate::protocol::error::controller_code;

/// Entities named in one AlterClientQuotas request at most (more: INVALID_REQUEST for the rest).
pub const ENTRIES_PER_REQUEST_MAX: usize = 1000;

/// DescribeClientQuotas `match_type`s.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_ANY: i8 = 2;

fn failure(e: &ControllerError) -> (i16, Option<StrBytes>) {
    (controller_code(e), Some(str_bytes(e.to_string())))
}

fn filter_of(req: &DescribeClientQuotasRequest) -> Result<QuotaFilter, ControllerError> {
    let components = req
        .components
        .iter()
        .map(|c| {
            let matching = match (c.match_type, &c._match) {
                (MATCH_EXACT, Some(name)) => Match::Exact(name.to_string()),
                (MATCH_EXACT, None) => return Err(ControllerError::InvalidRequest("an exact match needs a name".into())),
                (MATCH_DEFAULT, _) => Match::Default,
                (MATCH_ANY, _) => Match::Any,
                (t, _) => return Err(ControllerError::InvalidRequest(format!("Unexpected match type: {t}"))),
            };
            Ok(FilterComponent { entity_type: c.entity_type.to_string(), matching })
        })
        .collect::<Result<_, _>>()?;
    Ok(QuotaFilter { components, strict: req.strict })
}

pub async fn describe(agent: &Agent, access: &Access<'_>, req: DescribeClientQuotasRequest) -> DescribeClientQuotasResponse {
    use describe_client_quotas_response::{EntityData, EntryData, ValueData};
    if !access.check_cluster(AclOperation::DescribeConfigs) {
        return DescribeClientQuotasResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes("DESCRIBE_CONFIGS on the cluster is not allowed")))
            .with_entries(None);
    }
    let found = match filter_of(&req) {
        Ok(filter) => agent.controller.describe_client_quotas(filter).await,
        Err(e) => Err(e),
    };
    // Kafka's null for "no error" (the crate's default is an empty string).
    let resp = DescribeClientQuotasResponse::default().with_error_message(None);
    match found {
        Err(e) => {
            let (code, message) = failure(&e);
            resp.with_error_code(code).with_error_message(message).with_entries(None)
        }
        Ok(entries) => resp.with_entries(Some(
            entries
                .into_iter()
                .map(|e| {
                    EntryData::default()
                        .with_entity(
                            e.entity
                                .parts()
                                .into_iter()
                                .map(|(t, n)| EntityData::default().with_entity_type(str_bytes(t)).with_entity_name(n.map(str_bytes)))
                                .collect(),
                        )
                        .with_values(
                            e.values.iter().map(|(k, v)| ValueData::default().with_key(str_bytes(k.name())).with_value(*v)).collect(),
                        )
                })
                .collect(),
        )),
    }
}

pub async fn alter(agent: &Agent, access: &Access<'_>, req: AlterClientQuotasRequest) -> AlterClientQuotasResponse {
    use alter_client_quotas_response::{EntityData, EntryData};
    // One result per entry, in request order; entries that fail here are not sent on.
    let mut results: Vec<Option<Result<(), ControllerError>>> = Vec::with_capacity(req.entries.len());
    let mut sent: Vec<(usize, QuotaAlteration)> = Vec::new();
    let allowed = access.check_cluster(AclOperation::AlterConfigs);
    for (i, entry) in req.entries.iter().enumerate() {
        if !allowed {
            results.push(None);
            continue;
        }
        if i >= ENTRIES_PER_REQUEST_MAX {
            results.push(Some(Err(ControllerError::InvalidRequest(format!("more than {ENTRIES_PER_REQUEST_MAX} entities")))));
            continue;
        }
        let entity: Vec<EntityPart> = entry
            .entity
            .iter()
            .map(|p| EntityPart { entity_type: p.entity_type.to_string(), name: p.entity_name.as_ref().map(|n| n.to_string()) })
            .collect();
        let ops: Vec<QuotaOp> =
            entry.ops.iter().map(|o| QuotaOp { key: o.key.to_string(), value: (!o.remove).then_some(o.value) }).collect();
        // NaN and infinities cannot travel as JSON: refused here, with the controller's words.
        let unrepresentable = entry.ops.iter().find(|o| !o.remove && !o.value.is_finite());
        if let Some(o) = unrepresentable {
            results.push(Some(Err(ControllerError::InvalidRequest(format!("Quota {} must be a finite number", o.key)))));
            continue;
        }
        results.push(None);
        sent.push((i, QuotaAlteration { entity, ops }));
    }
    if !sent.is_empty() {
        let alterations = sent.iter().map(|(_, a)| a.clone()).collect();
        let answered = agent.controller.alter_client_quotas(alterations, req.validate_only).await;
        for (k, (i, _)) in sent.iter().enumerate() {
            results[*i] = Some(match &answered {
                Ok(each) => each.get(k).cloned().unwrap_or(Err(ControllerError::OperationNotAttempted)),
                Err(e) => Err(e.clone()),
            });
        }
    }
    let entries = req
        .entries
        .iter()
        .zip(results)
        .map(|(entry, result)| {
            let entity = entry
                .entity
                .iter()
                .map(|p| EntityData::default().with_entity_type(p.entity_type.clone()).with_entity_name(p.entity_name.clone()))
                .collect();
            let out = EntryData::default().with_entity(entity);
            match result {
                _ if !allowed => out
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes("ALTER_CONFIGS on the cluster is not allowed"))),
                Some(Err(e)) => {
                    let (code, message) = failure(&e);
                    out.with_error_code(code).with_error_message(message)
                }
                _ => out.with_error_message(None),
            }
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}

/// A response that can say how long its client is throttled: a copy with `throttle_time_ms`
/// set (`None`: the response has no such field). Setting it is safe for every version: the
/// encoder leaves it out of versions without it.
pub trait Throttle: Encodable + Clone {
    fn with_throttle(&self, ms: i32) -> Option<Self>;
}

macro_rules! throttle_time_ms {
    ($($t:ident),* $(,)?) => {
        $(impl Throttle for $t {
            fn with_throttle(&self, ms: i32) -> Option<Self> {
                Some(self.clone().with_throttle_time_ms(ms))
            }
        })*
    };
}

throttle_time_ms!(
    AddOffsetsToTxnResponse,
    ShareGroupHeartbeatResponse,
    ShareGroupDescribeResponse,
    ShareFetchResponse,
    ShareAcknowledgeResponse,
    DescribeShareGroupOffsetsResponse,
    AlterShareGroupOffsetsResponse,
    DeleteShareGroupOffsetsResponse,
    GetTelemetrySubscriptionsResponse,
    PushTelemetryResponse,
    AlterPartitionReassignmentsResponse,
    DescribeLogDirsResponse,
    DescribeProducersResponse,
    ElectLeadersResponse,
    ListPartitionReassignmentsResponse,
    OffsetForLeaderEpochResponse,
    AddPartitionsToTxnResponse,
    AlterClientQuotasResponse,
    AlterUserScramCredentialsResponse,
    ApiVersionsResponse,
    ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatResponse,
    StreamsGroupDescribeResponse,
    StreamsGroupHeartbeatResponse,
    CreateAclsResponse,
    CreatePartitionsResponse,
    CreateTopicsResponse,
    DeleteAclsResponse,
    DeleteGroupsResponse,
    DeleteRecordsResponse,
    DeleteTopicsResponse,
    DescribeAclsResponse,
    DescribeClientQuotasResponse,
    DescribeClusterResponse,
    DescribeConfigsResponse,
    DescribeGroupsResponse,
    DescribeTopicPartitionsResponse,
    DescribeTransactionsResponse,
    DescribeUserScramCredentialsResponse,
    EndTxnResponse,
    FetchResponse,
    FindCoordinatorResponse,
    HeartbeatResponse,
    InitProducerIdResponse,
    JoinGroupResponse,
    LeaveGroupResponse,
    ListGroupsResponse,
    ListOffsetsResponse,
    ListTransactionsResponse,
    MetadataResponse,
    OffsetCommitResponse,
    OffsetDeleteResponse,
    OffsetFetchResponse,
    ProduceResponse,
    SyncGroupResponse,
    TxnOffsetCommitResponse,
);

impl Throttle for SaslHandshakeResponse {
    fn with_throttle(&self, _: i32) -> Option<Self> {
        None
    }
}

impl Throttle for SaslAuthenticateResponse {
    fn with_throttle(&self, _: i32) -> Option<Self> {
        None
    }
}

/// A topic CreateTopics, DeleteTopics or CreatePartitions names, by name or (DeleteTopics v6)
/// by id.
#[derive(Debug, Clone)]
enum Target {
    Name(String),
    Id(uuid::Uuid),
}

/// Which topic mutation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    Create,
    Delete,
    Grow,
}

/// What a topic mutation found before it ran, to count the partitions it created, deleted or
/// added.
#[derive(Debug)]
struct Mutations {
    /// Topics that did not exist (CreateTopics), or that did, with their partitions
    /// (DeleteTopics, CreatePartitions).
    before: Vec<(Target, i32)>,
    kind: Mutation,
    /// CreateTopics v6+, DeleteTopics v5+, CreatePartitions v3+: over the quota is refused, not
    /// throttled.
    strict: bool,
}

/// What the meter knows once the request is parsed and some quota applies to it.
#[derive(Debug)]
struct Started {
    key: ApiKey,
    limits: Limits,
    /// Produce: acks=0 requests are not charged request time (Kafka).
    acks: i16,
    /// Fetch: the request's session epoch (0: it opens a session).
    fetch_epoch: i32,
    mutations: Mutex<Option<Mutations>>,
}

/// The `user` of quota entities: the principal's name (`User:alice` -> `alice`).
fn user_of(principal: &str) -> &str {
    principal.strip_prefix("User:").unwrap_or(principal)
}

/// The client id of a request frame (without its length prefix), read from the header as it
/// is in every header version: after the key, version and correlation id, an INT16-length
/// string (null: empty).
fn header_client_id(frame: &[u8]) -> &str {
    let Some(len) = frame.get(8..10).map(|b| i16::from_be_bytes([b[0], b[1]])) else { return "" };
    let Ok(len) = usize::try_from(len) else { return "" };
    frame.get(10..10 + len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
}

/// The throttle time a Produce request earns as it is read: its size recorded against its
/// `producer_byte_rate` (Kafka records a produce request's size). The connection reads no
/// further request until this one's answer is sent and the time has passed, so pipelined
/// requests cannot run ahead of a throttle; the handler puts the time in the answer.
///
/// A request that finds its rate still over the quota waits here until it is back within it,
/// before it is recorded: Kafka's throttle time assumes the window keeps growing while the
/// client waits, but in a rate's first ten seconds the window counts whole samples at least,
/// so it shrinks at each second and a client told to wait comes back still over the quota
/// (in Kafka, it gets one request through each time: about a request a second more).
pub async fn produce_read(agent: &Agent, principal: &str, frame: &[u8]) -> u64 {
    let Some(limits) = agent.quotas.limits(user_of(principal), header_client_id(frame)) else { return 0 };
    let Some(limit) = limits.get(Kind::Produce) else { return 0 };
    loop {
        let ms = agent.quotas.throttle_now(limit);
        if ms == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    agent.quotas.record(limit, frame.len() as f64)
}

impl Started {
    /// What a topic mutation found before it ran, for counting after.
    fn expect(&self, m: Mutations) {
        *self.mutations.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
    }
}

/// One request's quota accounting (see the module doc).
pub struct Meter<'a> {
    agent: &'a Agent,
    user: &'a str,
    /// A throttle decided before the handler ran (the produce bytes, as the request was read).
    before: (u64, Kind),
    /// The handler's polled time.
    pub busy: Busy,
    started: OnceLock<Started>,
    /// The throttle time decided, and the kind that decided it.
    decided: Mutex<Option<(u64, Kind)>>,
}

impl<'a> Meter<'a> {
    /// `produce_throttle_ms`: what [`produce_read`] decided for this request (0 for others).
    pub fn new(agent: &'a Agent, principal: &'a str, produce_throttle_ms: u64) -> Self {
        Self {
            agent,
            user: user_of(principal),
            before: (produce_throttle_ms, Kind::Produce),
            busy: Busy::default(),
            started: OnceLock::new(),
            decided: Mutex::new(None),
        }
    }

    /// Learns which quotas apply to the parsed request (usually none: then the meter does
    /// nothing at all); for a Fetch or a topic mutation it may answer in the handler's place.
    pub fn start(&self, parsed: &mut Parsed, peer: SocketAddr) -> Option<Outcome> {
        let limits = self.agent.quotas.limits(self.user, &parsed.client_id)?;
        let (acks, fetch_epoch) = match &parsed.request {
            Request::Produce(r) => (r.acks, -1),
            Request::Fetch(r) => (-1, r.session_epoch),
            _ => (-1, -1),
        };
        let started = self.started.get_or_init(|| Started { key: parsed.key, limits, acks, fetch_epoch, mutations: Mutex::new(None) });
        let quotas = &self.agent.quotas;
        match &mut parsed.request {
            Request::Fetch(r) => {
                let limit = started.limits.get(Kind::Fetch)?;
                let ms = quotas.throttle_now(limit);
                if ms > 0 {
                    let ms = self.decide(Some((Kind::Fetch, ms)), None);
                    return Some(self.throttled_fetch(parsed.version, parsed.correlation_id, r, peer, ms));
                }
                // No answer larger than what the window allows (Kafka's getMaxValueInQuotaWindow).
                let cap = limit.max_in_window().clamp(1.0, i32::MAX as f64) as i32;
                if r.max_bytes <= 0 || r.max_bytes > cap {
                    r.max_bytes = cap;
                }
                r.min_bytes = r.min_bytes.min(r.max_bytes);
                None
            }
            Request::CreateTopics(r) if !r.validate_only => {
                let limit = started.limits.get(Kind::ControllerMutation)?;
                let strict = parsed.version >= 6;
                if let Some(ms) = self.mutation_refused(limit, strict) {
                    return Some(refuse_create(r, parsed.version, parsed.correlation_id, ms));
                }
                let controller = &self.agent.controller;
                let before = r
                    .topics
                    .iter()
                    .map(|t| t.name.0.to_string())
                    .filter(|n| controller.topic(TopicRef::Name(n)).is_none())
                    .map(|n| (Target::Name(n), 0))
                    .collect();
                started.expect(Mutations { before, kind: Mutation::Create, strict });
                None
            }
            Request::DeleteTopics(r) => {
                let limit = started.limits.get(Kind::ControllerMutation)?;
                let strict = parsed.version >= 5;
                if let Some(ms) = self.mutation_refused(limit, strict) {
                    return Some(refuse_delete(r, parsed.version, parsed.correlation_id, ms));
                }
                let targets: Vec<Target> = if parsed.version >= 6 {
                    r.topics
                        .iter()
                        .map(|t| t.name.as_ref().map_or(Target::Id(t.topic_id), |n| Target::Name(n.0.to_string())))
                        .collect()
                } else {
                    r.topic_names.iter().map(|n| Target::Name(n.0.to_string())).collect()
                };
                let before = targets.into_iter().filter_map(|t| self.partitions(&t).map(|p| (t, p))).collect();
                started.expect(Mutations { before, kind: Mutation::Delete, strict });
                None
            }
            Request::CreatePartitions(r) if !r.validate_only => {
                let limit = started.limits.get(Kind::ControllerMutation)?;
                let strict = parsed.version >= 3;
                if let Some(ms) = self.mutation_refused(limit, strict) {
                    return Some(refuse_create_partitions(r, parsed.version, parsed.correlation_id, ms));
                }
                let before = r
                    .topics
                    .iter()
                    .map(|t| Target::Name(t.name.0.to_string()))
                    .filter_map(|t| self.partitions(&t).map(|p| (t, p)))
                    .collect();
                started.expect(Mutations { before, kind: Mutation::Grow, strict });
                None
            }
            _ => None,
        }
    }

    /// A strict topic mutation (CreateTopics v6+, DeleteTopics v5+) of a principal already over
    /// its quota is refused: the throttle time to answer with.
    fn mutation_refused(&self, limit: &quota::Limit, strict: bool) -> Option<u64> {
        let ms = if strict { self.agent.quotas.mutations_exceeded(limit) } else { 0 };
        (ms > 0).then(|| self.decide(Some((Kind::ControllerMutation, ms)), None))
    }

    fn partitions(&self, t: &Target) -> Option<i32> {
        let r = match t {
            Target::Name(n) => TopicRef::Name(n),
            Target::Id(id) => TopicRef::Id(*id),
        };
        self.agent.controller.topic(r).map(|m| m.partitions)
    }

    /// The throttle time of this request, decided once: what it used is recorded then.
    pub fn throttle_ms(&self) -> u64 {
        self.decide(None, None)
    }

    /// A Fetch response frame the handler encoded itself: its size is what the fetch quota
    /// counts (Kafka: the response size). Throttled, it is replaced as Kafka replaces it: by an
    /// empty answer with the throttle time, its bytes not counted (the client fetches them again
    /// once the throttle time has passed).
    pub fn fetch_frame(&self, frame: &mut Vec<Bytes>, version: i16, correlation_id: i32) {
        let Some(s) = self.started.get() else { return };
        if s.key != ApiKey::Fetch {
            return;
        }
        let bytes = frame.iter().map(Bytes::len).sum::<usize>();
        let ms = self.decide(None, Some(bytes));
        if ms == 0 {
            return;
        }
        if let Some(l) = s.limits.get(Kind::Fetch) {
            self.agent.quotas.unrecord(l, bytes as f64);
        }
        // After the header (length, correlation id, flexible versions' empty tag section): the
        // throttle time, then (v7+) the error code and the session id.
        let header_version = ApiKey::Fetch.response_header_version(version);
        let at = 8 + usize::from(header_version >= 1);
        let mut session_id = if version >= 7 { read_i32_at(frame, at + 6).unwrap_or(0) } else { 0 };
        // A session this fetch opened is not kept: the client starts over with a full fetch.
        if s.fetch_epoch == 0 && session_id != 0 {
            self.agent.fetch_sessions.close(session_id);
            session_id = 0;
        }
        let empty = FetchResponse::default().with_throttle_time_ms(clamp_ms(ms)).with_session_id(session_id);
        match super::encode_frame(header_version, correlation_id, version, &empty) {
            Ok(f) => *frame = f,
            Err(e) => tracing::error!(error = %e, "cannot encode a throttled Fetch response"),
        }
    }

    /// Records what the request used (once) and returns the throttle time: the largest of its
    /// kinds', `extra` (a throttle decided before the handler ran) included.
    fn decide(&self, extra: Option<(Kind, u64)>, response_bytes: Option<usize>) -> u64 {
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ms, _)) = *decided {
            return ms;
        }
        let mut best = self.before;
        if let Some((kind, ms)) = extra {
            keep_larger(&mut best, kind, ms);
        }
        let Some(s) = self.started.get() else {
            *decided = Some(best);
            return best.0;
        };
        let quotas = &self.agent.quotas;
        if let (Some(bytes), Some(l)) = (response_bytes, s.limits.get(Kind::Fetch)) {
            keep_larger(&mut best, Kind::Fetch, quotas.record(l, bytes as f64));
        }
        let mutations = s.mutations.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(m), Some(l)) = (mutations, s.limits.get(Kind::ControllerMutation)) {
            let permits: i32 = m
                .before
                .iter()
                .map(|(t, before)| match (m.kind, self.partitions(t)) {
                    (Mutation::Create, Some(now)) => now,
                    (Mutation::Delete, None) => *before,
                    (Mutation::Grow, Some(now)) => (now - *before).max(0),
                    _ => 0,
                })
                .sum();
            if permits > 0 {
                let ms = quotas.record_mutations(l, f64::from(permits));
                // Strict versions were let in below the quota: the burst is not throttled.
                if !m.strict {
                    keep_larger(&mut best, Kind::ControllerMutation, ms);
                }
            }
        }
        // Kafka charges no request time to acks=0 produce requests.
        if !(s.key == ApiKey::Produce && s.acks == 0)
            && let Some(l) = s.limits.get(Kind::Request)
        {
            keep_larger(&mut best, Kind::Request, quotas.record(l, self.busy.percent()));
        }
        *decided = Some(best);
        best.0
    }

    /// The handler's outcome, throttled if the request is over a quota: the connection sends
    /// it, then reads nothing from this client for the throttle time.
    pub fn finish(&self, outcome: Outcome) -> Outcome {
        let frame = match outcome {
            Outcome::Respond(frame) => frame,
            Outcome::NoResponse => Vec::new(),
            other => return other,
        };
        let ms = self.decide(None, None);
        let kind = self.decided.lock().unwrap_or_else(|p| p.into_inner()).map_or(Kind::Request, |(_, k)| k);
        if ms == 0 {
            return if frame.is_empty() { Outcome::NoResponse } else { Outcome::Respond(frame) };
        }
        let mute_ms = ms.min(quota::MUTE_MS_MAX);
        quota::throttled(kind, mute_ms);
        Outcome::Throttled(frame, Duration::from_millis(mute_ms))
    }

    /// KIP-219: a Fetch over its quota gets an empty answer with the throttle time. Its fetch
    /// session moves on as for any answer (an incremental one's epoch; a new session is not
    /// opened: the client starts over with a full fetch, as after Kafka's throttled answer).
    fn throttled_fetch(&self, version: i16, correlation_id: i32, req: &FetchRequest, peer: SocketAddr, ms: u64) -> Outcome {
        let sessions = &self.agent.fetch_sessions;
        let resp = FetchResponse::default().with_throttle_time_ms(clamp_ms(ms));
        let resp = match sessions.begin(version, req, peer) {
            Err(code) => resp.with_error_code(code),
            Ok((Mode::Full { id }, _)) => {
                sessions.close(id);
                resp
            }
            Ok((mode, _)) => resp.with_session_id(mode.session_id()),
        };
        super::encode_response(ApiKey::Fetch, version, correlation_id, &resp)
    }
}

/// Keeps the larger throttle time (and the kind that asks for it).
fn keep_larger(best: &mut (u64, Kind), kind: Kind, ms: u64) {
    if ms > best.0 {
        *best = (ms, kind);
    }
}

fn clamp_ms(ms: u64) -> i32 {
    ms.min(i32::MAX as u64) as i32
}

const THROTTLED: &str = "The throttling quota has been exceeded.";

fn refuse_create(req: &CreateTopicsRequest, version: i16, correlation_id: i32, ms: u64) -> Outcome {
    let code = ResponseError::ThrottlingQuotaExceeded.code();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(code)
                .with_error_message(Some(str_bytes(THROTTLED)))
                .with_configs(None)
        })
        .collect();
    let resp = CreateTopicsResponse::default().with_throttle_time_ms(clamp_ms(ms)).with_topics(topics);
    super::encode_response(ApiKey::CreateTopics, version, correlation_id, &resp)
}

fn refuse_create_partitions(req: &CreatePartitionsRequest, version: i16, correlation_id: i32, ms: u64) -> Outcome {
    let code = ResponseError::ThrottlingQuotaExceeded.code();
    let results = req
        .topics
        .iter()
        .map(|t| {
            CreatePartitionsTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(code)
                .with_error_message(Some(str_bytes(THROTTLED)))
        })
        .collect();
    let resp = CreatePartitionsResponse::default().with_throttle_time_ms(clamp_ms(ms)).with_results(results);
    super::encode_response(ApiKey::CreatePartitions, version, correlation_id, &resp)
}

fn refuse_delete(req: &DeleteTopicsRequest, version: i16, correlation_id: i32, ms: u64) -> Outcome {
    let code = ResponseError::ThrottlingQuotaExceeded.code();
    let result = |name: Option<TopicName>, id: uuid::Uuid| {
        let r = DeletableTopicResult::default()
            .with_name(name)
            .with_error_code(code)
            .with_error_message(Some(str_bytes(THROTTLED)));
        if version >= 6 { r.with_topic_id(id) } else { r }
    };
    let responses = if version >= 6 {
        req.topics.iter().map(|t| result(t.name.clone(), t.topic_id)).collect()
    } else {
        req.topic_names.iter().map(|n| result(Some(n.clone()), uuid::Uuid::nil())).collect()
    };
    let resp = DeleteTopicsResponse::default().with_throttle_time_ms(clamp_ms(ms)).with_responses(responses);
    super::encode_response(ApiKey::DeleteTopics, version, correlation_id, &resp)
}

/// The big-endian INT32 at byte `at` of a frame given as slices.
fn read_i32_at(frame: &[Bytes], at: usize) -> Option<i32> {
    let mut bytes = [0u8; 4];
    let mut offset = 0;
    let mut found = 0;
    for chunk in frame {
        for (i, b) in bytes.iter_mut().enumerate() {
            if let Some(v) = (at + i).checked_sub(offset).and_then(|p| chunk.get(p)) {
                *b = *v;
                found += 1;
            }
        }
        offset += chunk.len();
    }
    (found == 4).then(|| i32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handlers::fetch::{FetchAnswer, encode};

    #[test]
    fn the_client_id_is_read_from_any_header_version() {
        let mut frame = vec![0, 0, 0, 9, 0, 0, 0, 7];
        frame.extend_from_slice(&2i16.to_be_bytes());
        frame.extend_from_slice(b"c1rest");
        assert_eq!(header_client_id(&frame), "c1");
        let mut null = frame[..8].to_vec();
        null.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(header_client_id(&null), "");
        assert_eq!(header_client_id(&frame[..11]), "", "cut short");
        assert_eq!(header_client_id(&[0, 0]), "");
        assert_eq!(user_of("User:CN=app,O=Example"), "CN=app,O=Example");
        assert_eq!(user_of("User:ANONYMOUS"), "ANONYMOUS");
    }

    /// The session id of an encoded Fetch response, where the throttled answer reads it, in
    /// every layout this agent writes (its own chunks, kafka-protocol's frame; flexible or not).
    #[test]
    fn the_session_id_is_found_in_encoded_fetch_responses() {
        for version in [7i16, 11, 12, 13, 16] {
            let header_version = ApiKey::Fetch.response_header_version(version);
            let response = FetchResponse::default().with_session_id(0x1234_5678).with_throttle_time_ms(0);
            let at = 8 + usize::from(header_version >= 1);
            let ours = encode(header_version, 5, version, FetchAnswer { response: response.clone(), records: Vec::new() }).unwrap();
            assert!(ours.len() > 1, "chunks");
            assert_eq!(read_i32_at(&ours, at + 6), Some(0x1234_5678), "v{version}");
            let theirs = super::super::encode_frame(header_version, 5, version, &response).unwrap();
            assert_eq!(read_i32_at(&theirs, at + 6), Some(0x1234_5678), "v{version}");
            assert_eq!(read_i32_at(&theirs, at), Some(0));
        }
        let split = vec![Bytes::from_static(&[1, 2]), Bytes::from_static(&[3]), Bytes::from_static(&[4, 5])];
        assert_eq!(read_i32_at(&split, 1), Some(i32::from_be_bytes([2, 3, 4, 5])));
        assert_eq!(read_i32_at(&split, 2), None);
    }
}
