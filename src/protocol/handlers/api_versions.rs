//! ApiVersions: the table of implemented APIs and versions, nothing more.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

use super::{Outcome, SUPPORTED_APIS, encode_frame};

fn table() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|(k, lo, hi)| ApiVersion::default().with_api_key(*k as i16).with_min_version(*lo).with_max_version(*hi))
        .collect()
}

pub fn handle(_version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(0).with_api_keys(table()).with_finalized_features_epoch(-1)
}

/// A client asked for an ApiVersions version newer than ours: answer in v0 with the table so
/// it can pick a version (KIP-511).
pub fn unsupported_version(correlation_id: i32) -> Outcome {
    let body = ApiVersionsResponse::default().with_error_code(ResponseError::UnsupportedVersion.code()).with_api_keys(table());
    encode_frame(0, correlation_id, 0, &body).map(Outcome::Respond).unwrap_or_else(Outcome::Close)
}
