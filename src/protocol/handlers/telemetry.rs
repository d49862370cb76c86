//! GetTelemetrySubscriptions and PushTelemetry (KIP-714): the requests, answered from
//! [`crate::agent::client_telemetry`], and the one place its errors become Kafka error codes.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    GetTelemetrySubscriptionsRequest, GetTelemetrySubscriptionsResponse, PushTelemetryRequest, PushTelemetryResponse,
};

use super::str_bytes;
use crate::agent::Agent;
use crate::agent::client_telemetry::{ACCEPTED_COMPRESSION_TYPES, ClientTelemetryError};

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

pub fn get_subscriptions(agent: &Agent, r: GetTelemetrySubscriptionsRequest, client_id: &str) -> GetTelemetrySubscriptionsResponse {
    match agent.client_telemetry.subscribe(r.client_instance_id, client_id) {
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

pub fn push(agent: &Agent, r: PushTelemetryRequest, client_id: &str) -> PushTelemetryResponse {
    let outcome =
        agent
            .client_telemetry
            .push(r.client_instance_id, client_id, r.subscription_id, r.terminating, r.compression_type, &r.metrics);
    PushTelemetryResponse::default().with_error_code(outcome.err().map_or(0, code))
}
