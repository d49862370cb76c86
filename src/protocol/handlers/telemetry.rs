//! GetTelemetrySubscriptions and PushTelemetry (KIP-714): the requests, answered from
//! [`crate::agent::client_telemetry`], and the one place its errors become Kafka error codes.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    GetTelemetrySubscriptionsRequest, GetTelemetrySubscriptionsResponse, PushTelemetryRequest, PushTelemetryResponse,
};

use super::str_bytes;
use crate::agent::Agent;
use crate::agent::client_telemetry::{ACCEPTED_COMPRESSION_TYPES, ClientTelemetryError};
use crate::api::client_metrics::ClientMeta;
use crate::protocol::listener::Peer;

/// The Kafka error code of each refusal.
fn code(e: ClientTelemetryError) -> i16 {
    match e {
        ClientTelemetryError::Throttled => ResponseError::ThrottlingQuotaExceeded.code(),
        ClientTelemetryError::UnknownSubscription => ResponseError::UnknownSubscriptionId.code(),
        ClientTelemetryError::UnsupportedCompression => ResponseError::UnsupportedCompressionType.code(),
        ClientTelemetryError::TooLarge => ResponseError::TelemetryTooLarge.code(),
        ClientTelemetryError::InvalidRecord => ResponseError::InvalidRecord.code(),
        ClientTelemetryError::InvalidRequest => ResponseError::InvalidRequest.code(),
    }
}

/// What subscriptions match the client on (its instance id is filled in by the agent).
fn client_meta(client_id: &str, peer: &Peer) -> ClientMeta {
    let (software_name, software_version) = peer.software.get().cloned().unwrap_or_default();
    ClientMeta {
        client_instance_id: String::new(),
        client_id: client_id.to_string(),
        software_name,
        software_version,
        source_address: peer.addr.ip().to_string(),
        source_port: peer.addr.port().to_string(),
    }
}

pub fn get_subscriptions(
    agent: &Agent,
    r: GetTelemetrySubscriptionsRequest,
    client_id: &str,
    peer: &Peer,
) -> GetTelemetrySubscriptionsResponse {
    match agent.client_telemetry.subscribe(r.client_instance_id, &client_meta(client_id, peer)) {
        Ok(g) => GetTelemetrySubscriptionsResponse::default()
            .with_client_instance_id(g.client_instance_id)
            .with_subscription_id(g.subscription_id)
            .with_accepted_compression_types(ACCEPTED_COMPRESSION_TYPES.to_vec())
            .with_push_interval_ms(i32::try_from(g.push_interval_ms).unwrap_or(i32::MAX))
            .with_telemetry_max_bytes(i32::try_from(g.max_bytes).unwrap_or(i32::MAX))
            .with_delta_temporality(false)
            .with_requested_metrics(g.metrics.into_iter().map(str_bytes).collect()),
        Err(e) => GetTelemetrySubscriptionsResponse::default().with_error_code(code(e)),
    }
}

pub fn push(agent: &Agent, r: PushTelemetryRequest, client_id: &str, peer: &Peer) -> PushTelemetryResponse {
    let client = client_meta(client_id, peer);
    let outcome =
        agent
            .client_telemetry
            .push(r.client_instance_id, &client, r.subscription_id, r.terminating, r.compression_type, &r.metrics);
    PushTelemetryResponse::default().with_error_code(outcome.err().map_or(0, code))
}
