//! ApiVersions: the table of implemented APIs and versions, and the KIP-584 features
//! (`kafka-features.sh describe`).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::{ApiVersion, FinalizedFeatureKey, SupportedFeatureKey};
use kafka_protocol::protocol::StrBytes;

use super::{Outcome, SUPPORTED_APIS, encode_frame};

fn table() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|(k, lo, hi)| ApiVersion::default().with_api_key(*k as i16).with_min_version(*lo).with_max_version(*hi))
        .collect()
}

/// A KIP-584 feature: the levels this agent supports and the one in force.
struct Feature {
    name: &'static str,
    min_level: i16,
    max_level: i16,
    finalized_level: i16,
}

/// The features, under Kafka 4.4's names. `group.version` 1 is the KIP-848 consumer group
/// protocol and `transaction.version` 2 KIP-890 part 2 (EndTxn v5 bumps the epoch, Produce v12
/// and TxnOffsetCommit v5 add partitions and groups themselves), both served and finalized, as
/// in a new Kafka 4.x cluster; clients of transaction versions 0-1 keep working (the version is
/// per transaction, `controller::txn`). `share.version` 1 is KIP-932 share groups and
/// `streams.version` 1 the KIP-1071 streams group protocol (StreamsGroupHeartbeat,
/// StreamsGroupDescribe), both served and finalized as in a new Kafka 4.4 cluster. KRaft's
/// `metadata.version` and `kraft.version` describe a quorum Sidestream does not have: not listed.
const FEATURES: [Feature; 4] = [
    Feature { name: "group.version", min_level: 0, max_level: 1, finalized_level: 1 },
    Feature { name: "share.version", min_level: 0, max_level: 1, finalized_level: 1 },
    Feature { name: "streams.version", min_level: 0, max_level: 1, finalized_level: 1 },
    Feature { name: "transaction.version", min_level: 0, max_level: 2, finalized_level: 2 },
];

/// The finalized features never change while agents run (nothing updates them), so their epoch
/// is fixed; clients keep the features of the highest epoch they have seen.
const FINALIZED_FEATURES_EPOCH: i64 = 1;

pub fn handle(version: i16) -> ApiVersionsResponse {
    // Before v4, a supported feature whose minimum level is 0 must be left out: older Java
    // clients refuse a range starting at 0 (KAFKA-17011, KAFKA-17492).
    let supported = FEATURES
        .iter()
        .filter(|f| version >= 4 || f.min_level > 0)
        .map(|f| {
            SupportedFeatureKey::default()
                .with_name(StrBytes::from_static_str(f.name))
                .with_min_version(f.min_level)
                .with_max_version(f.max_level)
        })
        .collect();
    // A feature at level 0 is not finalized, and Kafka leaves it out.
    let finalized = FEATURES
        .iter()
        .filter(|f| f.finalized_level > 0)
        .map(|f| {
            assert!(f.min_level <= f.finalized_level && f.finalized_level <= f.max_level, "{} finalized outside its range", f.name);
            FinalizedFeatureKey::default()
                .with_name(StrBytes::from_static_str(f.name))
                .with_min_version_level(f.finalized_level)
                .with_max_version_level(f.finalized_level)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(table())
        .with_supported_features(supported)
        .with_finalized_features(finalized)
        .with_finalized_features_epoch(FINALIZED_FEATURES_EPOCH)
}

/// A client asked for an ApiVersions version newer than ours: answer in v0 with the table so
/// it can pick a version (KIP-511).
pub fn unsupported_version(correlation_id: i32) -> Outcome {
    let body = ApiVersionsResponse::default().with_error_code(ResponseError::UnsupportedVersion.code()).with_api_keys(table());
    encode_frame(0, correlation_id, 0, &body).map(Outcome::Respond).unwrap_or_else(Outcome::Close)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &ApiVersionsResponse) -> (Vec<String>, Vec<String>) {
        let supported = r.supported_features.iter().map(|f| f.name.to_string()).collect();
        let finalized = r.finalized_features.iter().map(|f| format!("{}={}", f.name.as_str(), f.max_version_level)).collect();
        (supported, finalized)
    }

    #[test]
    fn v4_lists_every_feature_and_v3_leaves_out_those_starting_at_level_0() {
        let (supported, finalized) = names(&handle(4));
        assert_eq!(supported, ["group.version", "share.version", "streams.version", "transaction.version"]);
        assert_eq!(finalized, ["group.version=1", "share.version=1", "streams.version=1", "transaction.version=2"]);
        let (supported, finalized) = names(&handle(3));
        assert!(supported.is_empty(), "{supported:?}");
        assert_eq!(finalized, ["group.version=1", "share.version=1", "streams.version=1", "transaction.version=2"]);
        assert_eq!(handle(4).finalized_features_epoch, FINALIZED_FEATURES_EPOCH);
    }

    #[test]
    fn transaction_version_2_is_finalized_with_the_apis_its_clients_use() {
        // Java clients use EndTxn v5, Produce v12 and TxnOffsetCommit v5 once it is finalized.
        let r = handle(4);
        let tv = r.finalized_features.iter().find(|f| f.name.as_str() == "transaction.version").unwrap();
        assert_eq!((tv.min_version_level, tv.max_version_level), (2, 2));
        let tv = r.supported_features.iter().find(|f| f.name.as_str() == "transaction.version").unwrap();
        assert_eq!((tv.min_version, tv.max_version), (0, 2));
        let max = |key: kafka_protocol::messages::ApiKey| r.api_keys.iter().find(|a| a.api_key == key as i16).unwrap().max_version;
        use kafka_protocol::messages::ApiKey;
        assert!(max(ApiKey::EndTxn) >= 5 && max(ApiKey::Produce) >= 12 && max(ApiKey::TxnOffsetCommit) >= 5);
    }
}
